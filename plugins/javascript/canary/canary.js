// The canary plugin in JavaScript (world `select-plugin`).
//
// A request with `X-Canary: 1`, or whose client key falls in the canary's
// share (`fnv1a(key) % 100 < canary.percent`), goes to the canary backend
// (`canary.backend`: a URL as configured or a 0-based index) when it is
// healthy. Every other request goes to a healthy non-canary backend with
// the fewest requests in flight; among equals, the client key's hash
// chooses (so idle backends share the load and a client tends to stay on
// one). Nothing fits: no answer, and the gateway's built-in balancer
// chooses.
//
// The client key is the header `canary.key-header` (default `x-user`), or
// the client address.

import { config, backendUrl, backendCount } from "gateway:plugin/host@0.1.2";

let settings;

/** The configuration, read once per instance. */
function read() {
  if (settings) return settings;
  const wanted = (config("canary.backend") ?? "").trim().replace(/\/$/, "");
  let canary;
  if (/^\d+$/.test(wanted)) {
    canary = Number(wanted);
  } else if (wanted) {
    for (let i = 0; i < backendCount(); i++) {
      if ((backendUrl(i) ?? "").replace(/\/$/, "") === wanted) canary = i;
    }
  }
  const percent = Math.min(100, parseInt(config("canary.percent") ?? "0", 10) || 0);
  const keyHeader = (config("canary.key-header") ?? "").trim() || "x-user";
  settings = { canary, percent, keyHeader };
  return settings;
}

/** 32-bit FNV-1a over the key's UTF-16 code units. */
function fnv1a(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash;
}

export const backendSelect = {
  selectBackend(req, backends) {
    const { canary, percent, keyHeader } = read();
    const key = (req.header(keyHeader) ?? "").trim() || req.clientAddr();
    const forced = (req.header("x-canary") ?? "").trim() === "1";
    const isCanary = canary !== undefined && (forced || fnv1a(key) % 100 < percent);
    if (isCanary) {
      return backends[canary]?.healthy ? canary : undefined;
    }
    let fewest = Infinity;
    let candidates = [];
    backends.forEach((backend, i) => {
      if (!backend.healthy || i === canary) return;
      if (backend.inFlight < fewest) {
        fewest = backend.inFlight;
        candidates = [];
      }
      if (backend.inFlight === fewest) candidates.push(i);
    });
    return candidates.length ? candidates[fnv1a(key) % candidates.length] : undefined;
  },
};
