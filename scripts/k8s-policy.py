#!/usr/bin/env python3
"""Security policy over rendered manifests (make k8s-check): every pod runs as non-root with
the RuntimeDefault seccomp profile; every container and init container has no privilege
escalation, a read-only root filesystem, no capabilities and is not privileged; every
container but the agent mounts the model volume read-only; kiln-server's repository
(admin) endpoints are off, or on with an admin token; and the pod's
terminationGracePeriodSeconds exceeds kiln-server's whole shutdown budget
(--shutdown-timeout-s, default 30 s; and at least --drain-delay-s), so a rollout never
SIGKILLs a server that is still answering the requests routed to it.

Usage: k8s-policy.py RENDERED.yaml   (exit 1 with one line per violation)
"""
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Pod"}


def pod_spec(doc):
    if doc.get("kind") == "Pod":
        return doc.get("spec", {})
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def flag(args, name, default):
    return float(args[args.index(name) + 1]) if name in args else default


def shutdown_budget(cname, args, grace):
    budget = flag(args, "--shutdown-timeout-s", 30.0)
    delay = flag(args, "--drain-delay-s", 5.0)
    if delay > budget:
        return [f"{cname}: --drain-delay-s {delay} is longer than --shutdown-timeout-s {budget}"]
    if grace <= budget:
        return [f"{cname}: terminationGracePeriodSeconds {grace} must exceed the server's "
                f"shutdown budget (--shutdown-timeout-s {budget})"]
    return []


def check(path):
    errors = []
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    pods = 0
    for doc in docs:
        if doc.get("kind") not in WORKLOADS:
            continue
        pods += 1
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errors.append(f"{name}: securityContext.runAsNonRoot must be true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            errors.append(f"{name}: seccompProfile must be RuntimeDefault")
        model_volumes = {v["name"] for v in spec.get("volumes", []) if v["name"] == "models"}
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            cname = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cname}: allowPrivilegeEscalation must be false")
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cname}: readOnlyRootFilesystem must be true")
            if sc.get("privileged") is True:
                errors.append(f"{cname}: must not be privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"{cname}: capabilities must drop ALL")
            if sc.get("capabilities", {}).get("add"):
                errors.append(f"{cname}: must add no capabilities")
            is_agent = "kiln-agent" in str(c.get("image", "")) or c["name"] == "kiln-agent"
            for m in c.get("volumeMounts", []):
                if m["name"] in model_volumes and not is_agent and m.get("readOnly") is not True:
                    errors.append(f"{cname}: the model volume must be mounted read-only")
            args = [str(a) for a in c.get("args", []) + c.get("command", [])]
            if "--admin" in args and "--admin-token-file" not in args:
                errors.append(f"{cname}: --admin needs --admin-token-file (or leave it off)")
            if "kiln-server" in str(c.get("image", "")):
                errors += shutdown_budget(cname, args, spec.get("terminationGracePeriodSeconds", 30))
    if pods == 0:
        errors.append("no workload found")
    return errors


if __name__ == "__main__":
    errs = check(sys.argv[1])
    for e in errs:
        print(f"k8s-policy: {e}", file=sys.stderr)
    sys.exit(1 if errs else 0)
