#!/usr/bin/env python3
"""Checks every Envoy config under envoy-examples/ with `envoy --mode validate` (which also
loads the Wasm VM and runs the filter's on_configure). Templates are rendered first.
Kubernetes manifests (Istio, Envoy Gateway) are parsed and their plugin configuration is
checked to be a JSON object the filter would accept in shape."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
import render


# The HttpConnectionManager settings every shipped Envoy config carries (docs/security.md).
SECURE_HCM = {"normalize_path": True, "merge_slashes": True,
              "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT", "use_remote_address": True}


def insecure_connection_managers(docs):
    """stat_prefix of every HttpConnectionManager that lacks a SECURE_HCM setting."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if str(node.get("@type", "")).endswith("HttpConnectionManager"):
                if any(node.get(k) != v for k, v in SECURE_HCM.items()):
                    found.append(node.get("stat_prefix"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(docs)
    return found


# The tag-extraction rules that give the filter's metrics their labels (filter/src/metrics.rs).
STATS_TAGS = [d for d in yaml.safe_load((HERE / "observability" / "stats_tags.yaml").read_text())]


def manifest_stats_tags(docs):
    """The stats_tags a manifest merges into Envoy's bootstrap: an Istio bootstrap-override
    ConfigMap or an Envoy Gateway EnvoyProxy; None if it carries none."""
    for d in docs:
        if d.get("kind") == "ConfigMap" and "custom_bootstrap.json" in d.get("data", {}):
            return json.loads(d["data"]["custom_bootstrap.json"]).get("stats_config", {}).get("stats_tags")
        if d.get("kind") == "EnvoyProxy":
            bootstrap = yaml.safe_load(d.get("spec", {}).get("bootstrap", {}).get("value", "")) or {}
            return bootstrap.get("stats_config", {}).get("stats_tags")
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--envoy", required=True)
    p.add_argument("--wasm", required=True)
    p.add_argument("--plugin-config", required=True)
    p.add_argument("--portcullis", required=True, help="the portcullis CLI (bundle validates plugin configs)")
    a = p.parse_args()
    plugin = json.loads(Path(a.plugin_config).read_text())
    failures, checked = 0, 0
    # observability/ holds the stats tags, alert rules and dashboard, checked by their own tests.
    configs = [p for p in HERE.rglob("*.yaml") if "observability" not in p.relative_to(HERE).parts]
    for path in sorted([*configs, *(HERE.parent / "benches" / "envoy").glob("*.envoy.yaml")]):
        text = path.read_text()
        docs = [d for d in yaml.safe_load_all(text.replace("{{", "__").replace("}}", "__")) if d]
        if any(isinstance(d, dict) and "static_resources" in d for d in docs):
            rendered = render.render(text, a.wasm, plugin, 20000, 20001, 20002)
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                f.write(rendered)
            r = subprocess.run([a.envoy, "--mode", "validate", "-c", f.name, "--use-dynamic-base-id", "-l", "warning"],
                               capture_output=True, text=True, timeout=120)
            ok = r.returncode == 0
            insecure = insecure_connection_managers(docs)
            if insecure:
                ok = False
                print(f"  HttpConnectionManager(s) {insecure} lack the settings docs/security.md requires: "
                      f"{SECURE_HCM}")
            if "root_id: portcullis" in text and docs[0].get("stats_config", {}).get("stats_tags") != STATS_TAGS:
                ok = False
                print("  stats_config.stats_tags differs from envoy-examples/observability/stats_tags.yaml")
            print(f"{'ok  ' if ok else 'FAIL'} envoy --mode validate {path.relative_to(HERE.parent)}")
            if not ok:
                print(r.stdout[-3000:], r.stderr[-3000:])
        else:
            ok = all(isinstance(d, dict) and "kind" in d for d in docs)
            kinds = {d.get("kind") for d in docs if isinstance(d, dict)}
            for plugin_kind, settings_kind in (("WasmPlugin", "IstioOperator"),
                                               ("EnvoyExtensionPolicy", "ClientTrafficPolicy")):
                if plugin_kind in kinds and settings_kind not in kinds:
                    ok = False
                    print(f"  {plugin_kind} without the {settings_kind} that docs/security.md requires")
            if kinds & {"WasmPlugin", "EnvoyExtensionPolicy"} and manifest_stats_tags(docs) != STATS_TAGS:
                ok = False
                print("  no bootstrap stats_tags equal to envoy-examples/observability/stats_tags.yaml "
                      "(Istio: ConfigMap custom_bootstrap.json; Envoy Gateway: EnvoyProxy bootstrap)")
            for d in docs:
                spec = d.get("spec", {}) if isinstance(d, dict) else {}
                configs = [spec.get("pluginConfig")] if d.get("kind") == "WasmPlugin" else \
                    [w.get("config") for w in spec.get("wasm", [])] if d.get("kind") == "EnvoyExtensionPolicy" else []
                for plugin_config in configs:
                    # The filter's own validation, through `portcullis bundle`.
                    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                        json.dump(plugin_config, f)
                    r = subprocess.run([a.portcullis, "bundle", f.name, "-o", os.devnull], capture_output=True, text=True)
                    if r.returncode != 0:
                        ok = False
                        print(r.stdout, r.stderr)
            print(f"{'ok  ' if ok else 'FAIL'} manifest {path.relative_to(HERE.parent)} ({len(docs)} documents)")
        checked += 1
        failures += not ok
    print(f"validated {checked} configs, {failures} failed")
    return 1 if failures or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
