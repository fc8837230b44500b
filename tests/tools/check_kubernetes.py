#!/usr/bin/python3
"""Checks deploy/kubernetes/*.yaml: each file parses as YAML; the DaemonSet's proctord
container names only flags that `proctord --help` lists; its gRPC probes ask the port of
--health-listen, which the container declares; the socket of --listen unix:... is on a
hostPath mount; the files of --tls-cert, --tls-key, --tls-client-ca and --authkey-file are on
Secret mounts; --state-dir is on a hostPath mount.

usage: check_kubernetes.py MANIFEST_DIR PROCTORD
"""
import glob
import os
import re
import subprocess
import sys

import yaml

failures = []


def fail(message):
    failures.append(message)


def flags_of_help(proctord):
    text = subprocess.run([proctord, "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+(?:-\w,)?(--[a-z0-9-]+)", text, re.MULTILINE))


def mount_of(container, volumes, path):
    """The volume whose mount holds `path`, or None."""
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/") + "/"
        if (path.rstrip("/") + "/").startswith(root):
            return volumes.get(mount["name"])
    return None


def check_daemonset(daemonset, help_flags):
    spec = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    containers = [c for c in spec["containers"] if "proctord" in " ".join(c.get("command", []))]
    if len(containers) != 1:
        fail("the DaemonSet has no single container running proctord")
        return
    container = containers[0]
    args = container.get("command", [])[1:] + container.get("args", [])
    flags = {}
    for arg in args:
        if not arg.startswith("--"):
            fail(f"{arg!r}: give flags as --flag=value")
            continue
        name, _, value = arg.partition("=")
        if name not in help_flags:
            fail(f"{name} is not a flag of proctord (proctord --help)")
        flags.setdefault(name, []).append(value)

    health = flags.get("--health-listen", [""])[0]
    health_port = int(health.rpartition(":")[2]) if health else None
    if health_port is None:
        fail("no --health-listen for the probes")
    declared = {p["containerPort"] for p in container.get("ports", [])}
    if health_port not in declared:
        fail(f"the health port {health_port} is not among the container's ports")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        grpc = container.get(probe, {}).get("grpc")
        if grpc is None:
            fail(f"{probe} is not a gRPC probe")
        elif grpc.get("port") != health_port:
            fail(f"{probe} asks port {grpc.get('port')}, not --health-listen's {health_port}")

    unix = [v[len("unix:"):] for v in flags.get("--listen", []) if v.startswith("unix:")]
    if not unix:
        fail("no --listen unix:... for the node's own clients")
    for path in unix + flags.get("--state-dir", []):
        volume = mount_of(container, volumes, os.path.dirname(path) if path in unix else path)
        if volume is None or "hostPath" not in volume:
            fail(f"{path} is not on a hostPath mount")
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--authkey-file"):
        for path in flags.get(flag, []):
            volume = mount_of(container, volumes, path)
            if volume is None or "secret" not in volume:
                fail(f"{flag} {path} is not on a Secret mount")
    tcp = [v for v in flags.get("--listen", []) if not v.startswith("unix:")]
    if tcp and "--tls-cert" not in flags:
        fail("a TCP --listen without --tls-cert")


def main():
    manifest_dir, proctord = sys.argv[1], sys.argv[2]
    help_flags = flags_of_help(proctord)
    if "--health-listen" not in help_flags:
        sys.exit(f"cannot read the flags from {proctord} --help")
    daemonsets = 0
    files = sorted(glob.glob(os.path.join(manifest_dir, "*.yaml")))
    if not files:
        sys.exit(f"no manifests in {manifest_dir}")
    for path in files:
        with open(path) as f:
            try:
                documents = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as error:
                fail(f"{path}: {error}")
                continue
        for document in documents:
            if not {"apiVersion", "kind", "metadata"} <= document.keys():
                fail(f"{path}: a document without apiVersion, kind and metadata")
            if document.get("kind") == "DaemonSet":
                daemonsets += 1
                check_daemonset(document, help_flags)
    if daemonsets != 1:
        fail(f"{daemonsets} DaemonSets, not one")
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"{len(files)} manifest(s), {daemonsets} DaemonSet: "
          f"{'OK' if not failures else f'{len(failures)} problem(s)'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
