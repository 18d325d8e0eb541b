//! Routes and pools: host and path routing over several pools, per-route
//! rate-limit policies, and the admin and metrics views of them.

use crate::support::{Gateway, TestBackend, client, get, request, send};

const TOKEN: &str = "test-token";

/// Three pools and routes by host, path, method and header.
fn three_pools(
    db: &std::path::Path,
    api: &[&TestBackend],
    web: &TestBackend,
    assets: &TestBackend,
) -> String {
    let api: Vec<String> = api
        .iter()
        .map(|b| format!("      - {}\n", b.url()))
        .collect();
    format!(
        r#"admin:
  token: {TOKEN}
rate_limit:
  database: sqlite://{}/limits.db
  default: {{capacity: 1000, refill_per_second: 100}}
pools:
  api:
    backends:
{}  web:
    backends: [{}]
  assets:
    backends: [{}]
routes:
  - name: api
    match: {{host: api.test, path_prefix: /v1}}
    pool: api
    strip_prefix: true
  - name: login
    match: {{path_prefix: /login, methods: [POST]}}
    pool: web
    rate_limit: {{capacity: 2, refill_per_second: 0.001}}
  - match: {{host: "*.assets.test"}}
    pool: assets
    rate_limit: off
  - name: canary
    match: {{headers: {{X-Canary: "1"}}}}
    pool: assets
  - match: {{path: /exact}}
    pool: web
  - name: costly
    match: {{path_prefix: /report}}
    pool: web
    cost: 400
  - match: {{path_prefix: /web}}
    pool: web
"#,
        db.display(),
        api.concat(),
        web.url(),
        assets.url()
    )
}

async fn call(
    gw: &Gateway,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let (status, headers, body) = send(&client(), request(method, &gw.url(path), &all, "")).await;
    (status.as_u16(), headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_method_and_header_routes_over_three_pools() {
    let (a1, a2) = (
        TestBackend::start("api-1").await,
        TestBackend::start("api-2").await,
    );
    let web = TestBackend::start("web").await;
    let assets = TestBackend::start("assets").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&three_pools(db.path(), &[&a1, &a2], &web, &assets));

    // Host (case and port ignored) and prefix on segment boundaries; the prefix is stripped.
    let (status, headers, body) = call(&gw, "GET", "API.test:8080", "/v1/items?x=1", &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("api-"), "{body}");
    assert_eq!(headers["x-path"], "/items?x=1");
    let (_, headers, _) = call(&gw, "GET", "api.test", "/v1", &[]).await;
    assert_eq!(headers["x-path"], "/");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(call(&gw, "GET", "api.test", "/v1/x", &[]).await.2);
    }
    assert_eq!(seen.len(), 2, "the api pool balances over both: {seen:?}");
    let (status, _, body) = call(&gw, "GET", "api.test", "/v10", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (404, r#"{"code":404,"message":"No route"}"#)
    );
    let (status, _, _) = call(&gw, "GET", "other.test", "/v1/items", &[]).await;
    assert_eq!(status, 404, "the api route needs its host");

    // Wildcard host: one or more labels in front, not the bare domain.
    let (status, _, body) = call(&gw, "GET", "img.cdn.assets.test", "/a.png", &[]).await;
    assert_eq!((status, body.as_str()), (200, "assets"));
    assert_eq!(call(&gw, "GET", "assets.test", "/a.png", &[]).await.0, 404);

    // Headers and exact paths.
    let (status, _, body) = call(&gw, "GET", "x.test", "/any", &[("x-canary", "1")]).await;
    assert_eq!((status, body.as_str()), (200, "assets"));
    assert_eq!(
        call(&gw, "GET", "x.test", "/any", &[("x-canary", "2")])
            .await
            .0,
        404
    );
    assert_eq!(call(&gw, "GET", "x.test", "/exact", &[]).await.2, "web");
    assert_eq!(call(&gw, "GET", "x.test", "/exact/more", &[]).await.0, 404);

    // Methods: GET /login has no route; POST /login has its own budget of 2.
    assert_eq!(call(&gw, "GET", "x.test", "/login", &[]).await.0, 404);
    for _ in 0..2 {
        let (status, headers, body) = call(&gw, "POST", "x.test", "/login", &[]).await;
        assert_eq!((status, body.as_str()), (200, "web"));
        assert!(
            headers["ratelimit-policy"]
                .to_str()
                .unwrap()
                .starts_with("\"login\";q=2;"),
            "{headers:?}"
        );
    }
    // `/web/../login` is `/login` to the backend, so it is the login route too.
    let (status, headers, body) = call(&gw, "POST", "x.test", "/web/../login", &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"login\"")
    );
    let (status, _, _) = call(&gw, "POST", "x.test", "/%6cogin", &[]).await;
    assert_eq!(status, 429, "percent-encoded letters match too");
    // A `%` that starts no escape has no single meaning: refused.
    let (status, _, body) = call(&gw, "POST", "x.test", "/%zz/../%6cogin", &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"code":400,"message":"Malformed request: invalid percent-encoding in the path"}"#
        )
    );
    // Exhausting /login limits nothing else: the top-level policy still has tokens.
    let (status, headers, _) = call(&gw, "GET", "api.test", "/v1/x", &[]).await;
    assert_eq!(status, 200);
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"default\";q=1000;")
    );
    // rate_limit: off sends no RateLimit fields.
    let (_, headers, _) = call(&gw, "GET", "a.assets.test", "/", &[]).await;
    assert!(!headers.contains_key("ratelimit"), "{headers:?}");

    // cost: a request to /report takes 400 of the top-level 1000 tokens.
    for expected in [200, 200, 429] {
        let (status, headers, _) = call(&gw, "GET", "x.test", "/report", &[]).await;
        assert_eq!(status, expected, "{headers:?}");
    }

    // /routes and /backends name pools; metrics carry route and pool.
    let (status, body) = gw.admin_call("GET", "/routes").await;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = view["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "api",
            "login",
            "*.assets.test",
            "canary",
            "/exact",
            "costly",
            "/web/*"
        ]
    );
    assert_eq!(view["routes"][1]["rate_limit"]["name"], "login");
    assert_eq!(view["routes"][2]["rate_limit"], "off");
    assert_eq!(view["pools"].as_array().unwrap().len(), 3);
    let (_, body) = gw.admin_call("GET", "/backends").await;
    let backends: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools: Vec<&str> = backends
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["pool"].as_str().unwrap())
        .collect();
    assert_eq!(pools, ["api", "api", "assets", "web"]);
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            r#"gateway_requests_total{{route="canary",pool="assets",backend="{}",class="2xx"}} 1"#,
            assets.url()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"gateway_requests_total{route="none",pool="none",backend="none",class="4xx"}"#
        ),
        "{metrics}"
    );
}

#[test]
fn validate_reports_every_routing_problem_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        concat!(
            "pools:\n  api:\n    backends: [http://127.0.0.1:9001]\n",
            "  spare:\n    backends: [http://127.0.0.1:9002]\n",
            "routes:\n  - match: {path_prefix: /v1}\n    pool: api\n",
            "  - match: {path_prefix: /v1/items}\n    pool: api\n",
            "  - match: {}\n    pool: nowhere\n",
            "  - match: {host: \"a.*.test\"}\n    pool: api\n",
            "proxy:\n  retries: many\n",
        ),
    )
    .unwrap();
    let (code, text) = crate::support::run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "routes.yaml:9:5: routes[1]: route \"/v1/items/*\" can never match: routes[0]",
        "routes[2].pool: no pool named \"nowhere\"; defined: api, spare",
        "routes[3].match.host: invalid host",
        "pools.spare: no route sends requests to pool spare",
        "routes.yaml:16:12: (yaml): ",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

/// A route's own plugins: one route chooses backends with the canary
/// plugin, another keys its own policy with the api-key plugin; a third
/// route over the same pool keeps the pool's round robin and no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_name_their_own_key_and_select_plugins() {
    let stable1 = TestBackend::start("stable1").await;
    let stable2 = TestBackend::start("stable2").await;
    let canary = TestBackend::start("canary").await;
    let db = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"admin:
  token: {TOKEN}
rate_limit:
  enabled: false
  database: sqlite://{}/limits.db
plugins:
  config:
    canary.backend: "{}"
pools:
  app:
    backends: [{}, {}, {}]
routes:
  - match: {{path_prefix: /split}}
    pool: app
    select_plugin: {}
  - match: {{path_prefix: /keyed}}
    pool: app
    key_plugin: {}
    rate_limit: {{capacity: 2, refill_per_second: 0.01, unknown_keys: own}}
  - match: {{}}
    pool: app
"#,
        db.path().display(),
        canary.url(),
        stable1.url(),
        stable2.url(),
        canary.url(),
        crate::support::plugin("canary").display(),
        crate::support::plugin("api_key").display(),
    );
    let gw = Gateway::start(&yaml);
    for _ in 0..6 {
        assert_eq!(
            call(&gw, "GET", "h", "/split", &[("x-canary", "1")])
                .await
                .2,
            "canary"
        );
    }
    let mut plain = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (status, headers, body) = call(&gw, "GET", "h", "/plain", &[("x-canary", "1")]).await;
        assert_eq!(status, 200);
        assert!(
            !headers.contains_key("ratelimit"),
            "rate limiting is off here"
        );
        plain.insert(body);
    }
    assert_eq!(plain.len(), 3, "round robin over the whole pool: {plain:?}");
    let mut seen = Vec::new();
    for key in ["alpha", "alpha", "alpha", "beta"] {
        seen.push(
            call(&gw, "GET", "h", "/keyed", &[("x-api-key", key)])
                .await
                .0,
        );
    }
    assert_eq!(
        seen,
        [200, 200, 429, 200],
        "each API key has its own bucket on /keyed"
    );
}

/// A route's own request timeout and body limit, beside a route with the
/// pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_set_their_own_timeout_and_body_limit() {
    let b = TestBackend::start("b").await;
    let yaml = format!(
        r#"admin:
  token: {TOKEN}
pools:
  app:
    backends: [{}]
    request_timeout: 5s
routes:
  - match: {{path_prefix: /slow}}
    pool: app
    request_timeout: 200ms
  - match: {{path_prefix: /long}}
    pool: app
    strip_prefix: true
  - match: {{path_prefix: /upload}}
    pool: app
    max_body_bytes: 10
"#,
        b.url()
    );
    let gw = Gateway::start(&yaml);
    let (status, _, body) = call(&gw, "GET", "h", "/slow?ms=1000", &[]).await;
    assert_eq!(status, 504, "{body}");
    // The same backend path through another route has the pool's 5 s.
    let (status, _, body) = call(&gw, "GET", "h", "/long/slow?ms=500", &[]).await;
    assert_eq!((status, body.as_str()), (200, "b"));
    // `/long/../slow` is `/slow` to the backend, so it is the /slow route.
    let (status, _, _) = call(&gw, "GET", "h", "/long/../slow?ms=500", &[]).await;
    assert_eq!(status, 504);
    let uri = gw.url("/upload");
    let small = send(&client(), request("POST", &uri, &[], "0123456789")).await;
    assert_eq!((small.0.as_u16(), small.2.as_str()), (200, "10"));
    let large = send(&client(), request("POST", &uri, &[], "0123456789!")).await;
    assert_eq!(large.0.as_u16(), 413);
}
