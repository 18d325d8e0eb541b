"""Parses a /metrics body from stdin with the Prometheus Python client's
parsers (the text format 0.0.4 one, or the OpenMetrics reference parser)
and prints one JSON object: family name -> {"type", "samples"}.

    python3 parse.py prometheus|openmetrics < body
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

parse = openmetrics_families if sys.argv[1] == "openmetrics" else text_families
families = {}
for family in parse(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(families))
