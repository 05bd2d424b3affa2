#!/usr/bin/env python3
"""Semantic check over one rendered overlay (make k8s-check): the objects hold together.

Schema validation passes manifests whose parts point past each other; this checks what a
platform team finds out only after applying them:
- every selector (Service, PodDisruptionBudget, NetworkPolicy, PodMonitor, topology spread)
  is present, non-empty, and matches the Deployment's pod labels; HPA and KEDA target the
  Deployment;
- the NetworkPolicy admits clients by the documented client label (`kiln-client: "true"`),
  never by kiln's own labels, and opens every port the Service exposes and the PodMonitor
  scrapes;
- every Service targetPort, probe port and PodMonitor port names a port of a container of
  the pod, and every probe and scrape path is one that container's program serves on it;
- the autoscaler scales on a metric the pod's server exports, and KEDA's query is scoped to
  the namespace the overlay deploys to (not a hard-coded one);
- no container overrides GPU visibility (the device plugin assigns GPUs);
- pods spread across zones and nodes.

Usage: k8s-semantic.py RENDERED.yaml   (exit 1 with one line per problem)
       k8s-semantic.py --self-test RENDERED.yaml   (each defect this check exists for, put
       into a good rendering, must be reported)
"""
import copy
import re
import sys

import yaml

CLIENT_LABEL = ("kiln-client", "true")
OWN_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/instance"}

# What each program serves, by port, as its flags in these manifests set it up: probes and
# scrapes must hit one of these paths. (kiln-server: crates/runtime/src/http/routes.rs; kiln-agent:
# crates/agent/src/health.rs; Triton: its documented HTTP and metrics endpoints.)
SERVES = {
    "kiln-server": {8000: {"/v2/health/live", "/v2/health/ready", "/metrics"}},
    "kiln-agent": {9090: {"/startupz", "/readyz", "/livez", "/metrics"}},
    "tritonserver": {8000: {"/v2/health/live", "/v2/health/ready"}, 8002: {"/metrics"}},
}
# Metric name prefixes each server exports (for the autoscaler check).
EXPORTS = {"kiln-server": ("kiln_",), "tritonserver": ("nv_",)}


def program(container):
    image = container.get("image", "")
    if "tritonserver" in image:
        return "tritonserver"
    if "kiln-agent" in image:
        return "kiln-agent"
    if "kiln-server" in image:
        return "kiln-server"
    return None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(docs):
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    dep = deployments[0]
    name = dep["metadata"]["name"]
    template = dep["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    spec = template["spec"]
    containers = spec.get("containers", []) + [
        c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    all_containers = spec.get("containers", []) + spec.get("initContainers", [])

    if not matches(dep["spec"].get("selector", {}).get("matchLabels", {}), labels):
        problems.append("Deployment: its selector does not match its own pod labels")

    def port_of(ref, among=containers):
        """(container, number) of a named or numbered port on the pod, or None."""
        for c in among:
            for p in c.get("ports", []):
                if ref in (p.get("name"), p.get("containerPort")):
                    return c, p["containerPort"]
        return None

    def served(where, c, number, path):
        prog = program(c)
        paths = SERVES.get(prog, {}).get(number)
        if prog and paths is not None and path not in paths:
            problems.append(f"{where}: {prog} does not serve {path} on port {number}")
        elif prog and paths is None:
            problems.append(f"{where}: {prog} serves nothing on port {number}")

    # Probes.
    for c in all_containers:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c.get(probe, {}).get("httpGet")
            if not get:
                continue
            found = port_of(get["port"], [c])
            if not found:
                problems.append(f"{c['name']}.{probe}: port {get['port']!r} is not a port of the container")
                continue
            served(f"{c['name']}.{probe}", c, found[1], get.get("path", "/"))
        for env in c.get("env", []):
            if env.get("name") in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
                problems.append(f"{c['name']}: sets {env['name']} (leave GPU visibility to the device plugin)")

    # Services.
    service_ports = []
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        if not matches(sel, labels):
            problems.append(f"Service {svc['metadata']['name']}: selector {sel} does not select the pods")
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            found = port_of(target)
            if not found:
                problems.append(f"Service {svc['metadata']['name']}: targetPort {target!r} is not a port of the pod")
            else:
                service_ports.append(found[1])

    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not matches(sel, labels):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']}: selector {sel or 'missing'} protects no pod of the Deployment")
    if not by_kind.get("PodDisruptionBudget"):
        problems.append("no PodDisruptionBudget")

    # Scrapes: the PodMonitor and the annotations.
    scraped = []
    for pm in by_kind.get("PodMonitor", []):
        sel = pm["spec"].get("selector", {}).get("matchLabels", {})
        if not matches(sel, labels):
            problems.append(f"PodMonitor {pm['metadata']['name']}: selector {sel} does not select the pods")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            found = port_of(ep.get("port"))
            if not found or not isinstance(ep.get("port"), str):
                problems.append(f"PodMonitor: port {ep.get('port')!r} is not a named port of the pod")
                continue
            served(f"PodMonitor port {ep['port']}", found[0], found[1], ep.get("path", "/metrics"))
            scraped.append(found[1])
    notes = template["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") == "true":
        number = int(notes.get("prometheus.io/port", "0"))
        found = port_of(number)
        if not found:
            problems.append(f"annotation prometheus.io/port {number} is not a port of the pod")
        else:
            served("annotation prometheus.io/port", found[0], number, notes.get("prometheus.io/path", "/metrics"))
            scraped.append(number)

    # NetworkPolicy.
    for np_ in by_kind.get("NetworkPolicy", []):
        where = f"NetworkPolicy {np_['metadata']['name']}"
        sel = np_["spec"].get("podSelector", {}).get("matchLabels", {})
        if not matches(sel, labels):
            problems.append(f"{where}: podSelector {sel or '{}'} does not select exactly the Deployment's pods")
        opened = set()
        client_rule = False
        for rule in np_["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            opened |= ports
            for peer in rule.get("from", []):
                ml = peer.get("podSelector", {}).get("matchLabels", {})
                if OWN_LABELS & set(ml):
                    problems.append(f"{where}: clients are admitted by kiln's own labels {ml}")
                if ml.get(CLIENT_LABEL[0]) == CLIENT_LABEL[1]:
                    client_rule = True
        if not client_rule:
            problems.append(f"{where}: no ingress rule admits the documented client label {CLIENT_LABEL[0]}={CLIENT_LABEL[1]}")
        for p in sorted(set(service_ports) | set(scraped)):
            if p not in opened:
                problems.append(f"{where}: port {p} (served or scraped) is not opened to ingress")

    # Autoscaling.
    server = next((program(c) for c in spec.get("containers", []) if program(c)), None)
    prefixes = EXPORTS.get(server, ())
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        if hpa["spec"]["scaleTargetRef"].get("name") != name:
            problems.append("HorizontalPodAutoscaler does not target the Deployment")
        for m in hpa["spec"].get("metrics", []):
            metric = m.get("pods", m.get("object", {})).get("metric", {}).get("name")
            if metric and prefixes and not metric.startswith(prefixes):
                problems.append(f"HorizontalPodAutoscaler scales on {metric}, which {server} does not export")
    for so in by_kind.get("ScaledObject", []):
        if so["spec"]["scaleTargetRef"].get("name") != name:
            problems.append("ScaledObject does not target the Deployment")
        for t in so["spec"].get("triggers", []):
            query = t.get("metadata", {}).get("query", "")
            ns = so["metadata"].get("namespace")
            pinned = re.findall(r'namespace="([^"]*)"', query)
            if not ns or pinned != [ns]:
                problems.append(f"ScaledObject query must be scoped to the namespace it is "
                                f"deployed to ({ns or 'none set'}): {query}")
            names = re.findall(r"\b([a-z_]+)\{", query)
            if prefixes and any(not n.startswith(prefixes) for n in names):
                problems.append(f"ScaledObject query uses a metric {server} does not export: {query}")

    # Spread.
    spread = spec.get("topologySpreadConstraints", [])
    keys = {s.get("topologyKey") for s in spread
            if matches(s.get("labelSelector", {}).get("matchLabels", {}), labels)}
    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        if key not in keys:
            problems.append(f"pods do not spread over {key}")
    return problems


def kind(docs, k):
    return next(d for d in docs if d["kind"] == k)


def pod(docs):
    return kind(docs, "Deployment")["spec"]["template"]["spec"]


# The defects found in the shipped overlays (issue 17), each as a change to a good rendering
# and a phrase the report must contain.
def _pdb_without_selector(d):
    del kind(d, "PodDisruptionBudget")["spec"]["selector"]


def _policy_selects_everything(d):
    kind(d, "NetworkPolicy")["spec"]["podSelector"] = {}


def _clients_by_own_labels(d):
    peer = kind(d, "NetworkPolicy")["spec"]["ingress"][0]["from"][0]
    peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] = "kiln"


def _scrape_wrong_port(d):
    kind(d, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] = "nope"


def _probe_wrong_path(d):
    pod(d)["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/ready"


def _gpu_visibility(d):
    pod(d)["containers"][0].setdefault("env", []).append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"})


def _no_spread(d):
    pod(d).pop("topologySpreadConstraints", None)


def _service_selects_nothing(d):
    kind(d, "Service")["spec"]["selector"] = {"app": "other"}


def _port_not_opened(d):
    kind(d, "NetworkPolicy")["spec"]["ingress"][1]["ports"] = []


MUTATIONS = [
    (_pdb_without_selector, "protects no pod"),
    (_policy_selects_everything, "podSelector {}"),
    (_clients_by_own_labels, "kiln's own labels"),
    (_scrape_wrong_port, "not a named port"),
    (_probe_wrong_path, "does not serve /ready"),
    (_gpu_visibility, "NVIDIA_VISIBLE_DEVICES"),
    (_no_spread, "do not spread"),
    (_service_selects_nothing, "does not select the pods"),
    (_port_not_opened, "not opened to ingress"),
]


def self_test(docs):
    assert not check(docs), check(docs)
    failures = []
    for mutate, phrase in MUTATIONS:
        changed = copy.deepcopy(docs)
        mutate(changed)
        report = "\n".join(check(changed))
        if phrase not in report:
            failures.append(f"{mutate.__name__}: expected {phrase!r}, got {report!r}")
    return failures


def main():
    test = sys.argv[1] == "--self-test"
    with open(sys.argv[-1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if test:
        failures = self_test(docs)
        for f in failures:
            print(f"k8s-semantic self-test: {f}", file=sys.stderr)
        print(f"k8s-semantic self-test: {len(MUTATIONS) - len(failures)} of {len(MUTATIONS)} defects reported")
        sys.exit(1 if failures else 0)
    problems = check(docs)
    for p in problems:
        print(f"k8s-semantic: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
