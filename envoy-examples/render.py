#!/usr/bin/env python3
"""Renders an Envoy template from envoy-examples/ with ports, the .wasm path and a bundled
plugin configuration (JSON, as printed by `portcullis bundle`)."""
import argparse
import json
import sys


def render(template, wasm, plugin_config, port, upstream_port, admin_port, jwks="inline", ratelimit_port=8081):
    config = json.loads(json.dumps(plugin_config))
    if jwks == "remote":
        for provider in config.get("jwt", {}).get("providers", []):
            if "inline" in provider.get("jwks", {}):
                provider["jwks"] = {"remote": {
                    "cluster": "jwks", "path": "/.well-known/jwks.json", "authority": "jwks.local",
                    "timeout_ms": 1000, "cache_duration_s": 300,
                }}
    quoted = json.dumps(json.dumps(config, separators=(",", ":")))
    out = template
    for name, value in {
        "{{PORT}}": str(port), "{{UPSTREAM_PORT}}": str(upstream_port), "{{ADMIN_PORT}}": str(admin_port),
        "{{WASM}}": wasm, "{{PLUGIN_CONFIG}}": quoted, "{{RATELIMIT_PORT}}": str(ratelimit_port),
    }.items():
        out = out.replace(name, value)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("template")
    p.add_argument("--wasm", required=True)
    p.add_argument("--plugin-config", required=True, help="bundled plugin JSON file")
    p.add_argument("--port", type=int, default=10000)
    p.add_argument("--upstream-port", type=int, default=10001)
    p.add_argument("--admin-port", type=int, default=9901)
    p.add_argument("--jwks", choices=["inline", "remote"], default="inline")
    p.add_argument("--ratelimit-port", type=int, default=8081, help="the rate-limit service (gRPC)")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    with open(a.template) as f:
        template = f.read()
    with open(a.plugin_config) as f:
        plugin = json.load(f)
    with open(a.output, "w") as f:
        f.write(render(template, a.wasm, plugin, a.port, a.upstream_port, a.admin_port, a.jwks,
                       a.ratelimit_port))


if __name__ == "__main__":
    sys.exit(main())
