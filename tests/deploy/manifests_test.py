#!/usr/bin/python3
"""Checks the deployment files against each other and against clip_server's flags.

    /usr/bin/python3 tests/deploy/manifests_test.py [--root REPO] [unittest args]

Renders deploy/k8s/base and every overlay (tests/deploy/kustomize_lite.py) and checks,
for each: the gRPC probes (startup, readiness, liveness) on the port clip_server
listens on, resources, the security context against the Dockerfile's USER, the drain
timing (terminationGracePeriodSeconds >= preStop sleep + --shutdown_grace_s + one
batch), the model volume, the Services, HPA and PDB selecting the Deployment's pods,
and that every flag the pods get is an ABSL_FLAG of server/main.cc. Also checks the
Dockerfile, the compose file and scripts/install-deps.sh. Needs python3-yaml.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kustomize_lite  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RENDERS = ("base", "overlays/cpu", "overlays/gpu")
GRPC_PORT = 50051
METRICS_PORT = 9090  # --metrics_port's default (the HTTP /metrics endpoint)
QUEUE_METRIC = "clipserve_queue_wait_seconds_p90"
# Seconds left after the preStop sleep and --shutdown_grace_s for the batch that is
# running when the drain ends: the server finishes it before it exits. A ViT-B/32 batch
# of 32 images takes 0.8 s (bf16) to 1.5 s (fp32) on 2 CPU cores (docs/PERFORMANCE.md).
BATCH_MARGIN_S = 5
# Flags absl itself defines (absl/flags/parse.cc) that the manifests may use.
ABSL_BUILTIN_FLAGS = {"flagfile"}


def read(relative):
    with open(os.path.join(ROOT, relative), encoding="utf-8") as f:
        return f.read()


def server_flags():
    """ABSL_FLAG names in server/main.cc -> their default literal (text as written)."""
    source = read("server/main.cc")
    found = re.findall(r"ABSL_FLAG\(\s*[^,()]+?\s*,\s*(\w+)\s*,\s*([^,]+?)\s*,", source)
    return {name: default.strip('"') for name, default in found}


def parse_flag_lines(text, where):
    """Parses a flagfile as absl does; returns [(name, value)]. Asserts on bad lines."""
    flags = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith("--") or stripped != stripped.rstrip():
            raise AssertionError(f"{where}: absl would misread the line {line!r}")
        name, _, value = stripped[2:].partition("=")
        flags.append((name, value))
    return flags


def cpu_quantity(value):
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def duration_seconds(text):
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(text))
    if not match or not any(match.groups()):
        raise AssertionError(f"cannot read the duration {text!r}")
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


class Dockerfile:
    """The final stage of the Dockerfile: instructions as (KEYWORD, argument text)."""

    def __init__(self, text):
        joined = re.sub(r"\\\n", " ", text)
        lines = [l.strip() for l in joined.splitlines()]
        self.instructions = [
            (l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "")
            for l in lines if l and not l.startswith("#")]
        starts = [i for i, (k, _) in enumerate(self.instructions) if k == "FROM"]
        self.final = self.instructions[starts[-1]:] if starts else []
        # Instructions only: a comment mentioning `ctest -L unit` must not count.
        self.all_text = "\n".join(f"{k} {a}" for k, a in self.instructions)

    def final_args(self, keyword):
        return [a for k, a in self.final if k == keyword]

    def entrypoint(self):
        entries = self.final_args("ENTRYPOINT")
        return json.loads(entries[-1]) if entries else []

    def user(self):
        users = self.final_args("USER")
        return users[-1] if users else ""


class Rendered:
    """One rendered kustomization, with accessors for the pieces the checks use."""

    def __init__(self, name):
        self.name = name
        self.resources = kustomize_lite.build(os.path.join(ROOT, "deploy/k8s", name))

    def of_kind(self, kind):
        return [r for r in self.resources if r["kind"] == kind]

    def one(self, kind, name=None):
        found = [r for r in self.of_kind(kind)
                 if name is None or r["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"{self.name}: expected one {kind} {name or ''}, got "
                                 f"{len(found)}")
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]

    @property
    def container(self):
        containers = self.pod["spec"]["containers"]
        named = [c for c in containers if c["name"] == "clipserve"]
        if len(named) != 1:
            raise AssertionError(f"{self.name}: no container named clipserve")
        return named[0]

    def mounted_file(self, path):
        """The text of a file the container sees at `path`, when a ConfigMap backs it."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if not path.startswith(prefix):
                continue
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                raise AssertionError(f"{self.name}: {path} is not on a ConfigMap volume")
            data = self.one("ConfigMap", source["name"]).get("data", {})
            key = path[len(prefix):]
            if key not in data:
                raise AssertionError(f"{self.name}: ConfigMap {source['name']} has no {key}")
            return data[key]
        raise AssertionError(f"{self.name}: nothing is mounted at {path}")

    def flags(self, entrypoint):
        """[(name, value)] in the order clip_server reads them: the image's entrypoint,
        then the container args, with each --flagfile expanded in place."""
        result = []
        command = self.container.get("command") or entrypoint
        for arg in list(command[1:]) + list(self.container.get("args", [])):
            if not arg.startswith("--"):
                raise AssertionError(f"{self.name}: positional argument {arg!r}")
            name, _, value = arg[2:].partition("=")
            result.append((name, value))
            if name == "flagfile":
                for path in value.split(","):
                    result.extend(parse_flag_lines(self.mounted_file(path),
                                                   f"{self.name}:{path}"))
        return result


class ManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server_flags = server_flags()
        cls.dockerfile = Dockerfile(read("Dockerfile"))
        cls.renders = [Rendered(name) for name in RENDERS]

    def effective_flags(self, r):
        values = {name: default for name, default in self.server_flags.items()}
        for name, value in r.flags(self.dockerfile.entrypoint()):
            values[name] = value
        return values

    def test_flag_list_parsed_from_main_cc(self):
        # Guards the regex: a parse that finds nothing would let any flag through.
        for name in ("host", "port", "model", "device", "shutdown_grace_s",
                     "intra_op_threads"):
            self.assertIn(name, self.server_flags)

    def test_every_flag_is_a_clip_server_flag(self):
        known = set(self.server_flags) | ABSL_BUILTIN_FLAGS
        for r in self.renders:
            for name, _ in r.flags(self.dockerfile.entrypoint()):
                self.assertIn(name, known, f"{r.name}: --{name} is not in server/main.cc")

    def test_probes_use_grpc_health_on_the_serving_port(self):
        for r in self.renders:
            port = int(self.effective_flags(r)["port"])
            self.assertEqual(port, GRPC_PORT, r.name)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertIn(probe, r.container, f"{r.name}: no {probe}")
                self.assertEqual(r.container[probe].get("grpc", {}).get("port"), port,
                                 f"{r.name}: {probe} is not a gRPC probe on {port}")
            startup = r.container["startupProbe"]
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            self.assertGreaterEqual(budget, 300, f"{r.name}: model loading needs time")

    def test_ports_and_scrape_annotations(self):
        for r in self.renders:
            flags = self.effective_flags(r)
            # The ports the server really listens on (a flag set in a ConfigMap too).
            self.assertEqual(int(flags["port"]), GRPC_PORT, r.name)
            self.assertEqual(int(flags["metrics_port"]), METRICS_PORT, r.name)
            ports = {p["name"]: p["containerPort"] for p in r.container["ports"]}
            self.assertEqual(ports.get("grpc"), GRPC_PORT, r.name)
            self.assertEqual(ports.get("metrics"), METRICS_PORT, r.name)
            notes = r.pod["metadata"].get("annotations", {})
            self.assertEqual(notes.get("prometheus.io/scrape"), "true", r.name)
            self.assertEqual(notes.get("prometheus.io/port"), str(METRICS_PORT), r.name)
            self.assertEqual(notes.get("prometheus.io/path"), "/metrics", r.name)

    def test_resources_and_threads_match(self):
        for r in self.renders:
            resources = r.container.get("resources", {})
            for kind in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    self.assertIn(what, resources.get(kind, {}), f"{r.name}: {kind}.{what}")
            flags = self.effective_flags(r)
            threads = int(flags["intra_op_threads"])
            # 0 means one thread per node core, which oversubscribes a CPU limit.
            self.assertGreaterEqual(threads, 1, f"{r.name}: set --intra_op_threads")
            # Equal: fewer leave limited cores idle, more oversubscribe them. On a GPU
            # the CPU's work is decoding: the decoding threads take the cores the
            # model's few CPU operations leave.
            if r.name == "overlays/gpu":
                threads += int(flags["preprocess_threads"])
                self.assertEqual(resources["requests"], {k: v for k, v in
                                 resources["limits"].items() if k != "nvidia.com/gpu"},
                                 f"{r.name}: Guaranteed QoS")
            self.assertEqual(threads, cpu_quantity(resources["limits"]["cpu"]), r.name)

    def test_gpu_overlay_and_only_it_asks_for_a_gpu(self):
        for r in self.renders:
            limits = r.container["resources"]["limits"]
            device = self.effective_flags(r)["device"]
            rolling = r.deployment["spec"]["strategy"]["rollingUpdate"]
            if r.name == "overlays/gpu":
                self.assertGreaterEqual(int(limits.get("nvidia.com/gpu", 0)), 1)
                self.assertTrue(device.startswith("cuda"), device)
                # A surge pod would wait for a spare GPU that maxReplicas leaves none of.
                self.assertEqual(rolling["maxSurge"], 0)
                self.assertGreaterEqual(rolling["maxUnavailable"], 1)
                self.assertIn("cuda", r.container["image"].rpartition(":")[2])
            else:
                self.assertNotIn("nvidia.com/gpu", limits, r.name)
                self.assertEqual(device, "cpu", r.name)

    def test_security_context(self):
        uid = self.dockerfile.user().split(":")[0]
        self.assertTrue(uid.isdigit() and int(uid) > 0,
                        f"Dockerfile USER {uid!r} must be a numeric non-root uid "
                        "(runAsNonRoot cannot verify a user name)")
        for r in self.renders:
            pod_sc = r.pod["spec"].get("securityContext", {})
            sc = r.container.get("securityContext", {})
            self.assertIs(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")), True, r.name)
            self.assertNotIn(False, (sc.get("runAsNonRoot"), pod_sc.get("runAsNonRoot")),
                             f"{r.name}: runAsNonRoot: false anywhere")
            self.assertEqual(sc.get("runAsUser", pod_sc.get("runAsUser")), int(uid), r.name)
            self.assertIs(sc.get("readOnlyRootFilesystem"), True, r.name)
            self.assertIs(sc.get("allowPrivilegeEscalation"), False, r.name)
            self.assertIn("ALL", sc.get("capabilities", {}).get("drop", []), r.name)
            mounts = {m["mountPath"] for m in r.container.get("volumeMounts", [])}
            self.assertIn("/tmp", mounts, f"{r.name}: read-only root needs a /tmp volume")

    def test_grace_period_covers_presleep_and_drain(self):
        for r in self.renders:
            pre_stop = r.container.get("lifecycle", {}).get("preStop", {})
            if "sleep" in pre_stop:
                sleep = pre_stop["sleep"]["seconds"]
            else:
                command = pre_stop.get("exec", {}).get("command", [])
                self.assertEqual(command[:1], ["sleep"], f"{r.name}: preStop sleep")
                sleep = float(command[1])
            drain = float(self.effective_flags(r)["shutdown_grace_s"])
            grace = r.pod["spec"].get("terminationGracePeriodSeconds", 30)
            # The batch running when the drain ends still finishes before exit.
            self.assertGreaterEqual(grace, sleep + drain + BATCH_MARGIN_S, r.name)

    def test_model_comes_from_a_read_only_volume(self):
        for r in self.renders:
            model = self.effective_flags(r)["model"]
            if model.startswith("demo:"):
                continue
            mounts = [m for m in r.container.get("volumeMounts", [])
                      if model.startswith(m["mountPath"].rstrip("/") + "/")]
            self.assertEqual(len(mounts), 1, f"{r.name}: --model={model} is not mounted")
            self.assertIs(mounts[0].get("readOnly"), True, r.name)
            volume = [v for v in r.pod["spec"]["volumes"] if v["name"] == mounts[0]["name"]]
            claim = volume[0].get("persistentVolumeClaim")
            if claim is not None:
                pvc = r.one("PersistentVolumeClaim", claim["claimName"])
                # Bound only to a volume made (and filled) beforehand: a default
                # StorageClass would provision an empty one.
                self.assertEqual(pvc["spec"].get("storageClassName"), "", r.name)
            else:
                self.assertIn("emptyDir", volume[0], r.name)

    def test_selectors_match_the_pods(self):
        for r in self.renders:
            labels = r.pod["metadata"]["labels"]
            selector = r.deployment["spec"]["selector"]["matchLabels"]
            self.assertLessEqual(selector.items(), labels.items(), r.name)
            pdb = r.one("PodDisruptionBudget")
            self.assertEqual(pdb["apiVersion"], "policy/v1")
            self.assertTrue(pdb["spec"]["selector"]["matchLabels"])
            self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(),
                                 labels.items(), r.name)
            for service in r.of_kind("Service"):
                self.assertTrue(service["spec"]["selector"])
                self.assertLessEqual(service["spec"]["selector"].items(), labels.items())
                port_names = {p["name"] for p in r.container["ports"]}
                for port in service["spec"]["ports"]:
                    self.assertIn(port["targetPort"], port_names | {GRPC_PORT})

    def test_replicas_spread_over_nodes_and_zones(self):
        for r in self.renders:
            labels = r.pod["metadata"]["labels"]
            spread = {c["topologyKey"]: c for c in r.pod["spec"]["topologySpreadConstraints"]}
            self.assertEqual(set(spread), {"kubernetes.io/hostname",
                                           "topology.kubernetes.io/zone"}, r.name)
            for c in spread.values():
                # Soft: a cluster of one node (or zone) still schedules every replica.
                self.assertEqual(c["whenUnsatisfiable"], "ScheduleAnyway", r.name)
                self.assertLessEqual(c["labelSelector"]["matchLabels"].items(),
                                     labels.items(), r.name)

    def test_dockerignore_leaves_out_the_gpu_downloads(self):
        with open(os.path.join(ROOT, ".dockerignore")) as f:
            ignored = f.read().split()
        self.assertIn("third_party/gpu-debs/", ignored)
        self.assertIn("third_party/gpu-shared/", ignored)

    def test_services_headless_and_cluster_ip(self):
        for r in self.renders:
            services = r.of_kind("Service")
            headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
            plain = [s for s in services if s["spec"].get("clusterIP") != "None"]
            self.assertEqual(len(headless), 1, r.name)
            self.assertEqual(len(plain), 1, r.name)
            for s in services:
                self.assertIn(GRPC_PORT, [p["port"] for p in s["spec"]["ports"]])

    def test_hpa_scales_on_cpu_or_on_the_gpus_queue_time(self):
        for r in self.renders:
            hpa = r.one("HorizontalPodAutoscaler")
            self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
            target = hpa["spec"]["scaleTargetRef"]
            self.assertEqual((target["apiVersion"], target["kind"], target["name"]),
                             ("apps/v1", "Deployment", r.deployment["metadata"]["name"]))
            self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2, r.name)
            # A replica count in the Deployment would reset the HPA's on every apply.
            self.assertNotIn("replicas", r.deployment["spec"], r.name)
            self.assertGreaterEqual(hpa["spec"]["maxReplicas"], hpa["spec"]["minReplicas"])
            metrics = hpa["spec"]["metrics"]
            pods = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
            cpu = [m for m in metrics
                   if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
            # On the CPU, queue time tracks the batch time more than the load. On a GPU
            # it does, but an image waiting for a decoding thread is not queued yet:
            # CPU use says those are behind.
            gpu = r.name == "overlays/gpu"
            self.assertEqual(pods, [QUEUE_METRIC] if gpu else [], r.name)
            self.assertEqual(len(cpu), 1, r.name)
            if gpu:
                # Saturated decoding threads must pass the CPU target by more than the
                # HPA's 10% tolerance, or they never scale the pods out.
                target = cpu[0]["resource"]["target"]["averageUtilization"]
                limit = cpu_quantity(r.container["resources"]["limits"]["cpu"])
                busy = 100 * int(self.effective_flags(r)["preprocess_threads"]) / limit
                self.assertGreater(busy, 1.1 * target, r.name)
            # A PDB that needs every replica up would block node drains.
            pdb = r.one("PodDisruptionBudget")["spec"]
            if "minAvailable" in pdb:
                self.assertLess(int(pdb["minAvailable"]), hpa["spec"]["minReplicas"])
            else:
                self.assertGreaterEqual(int(pdb["maxUnavailable"]), 1)

    @unittest.skipUnless(shutil.which("kubectl"), "kubectl (with kustomize) not installed")
    def test_renderer_agrees_with_kubectl_kustomize(self):
        # Where the real kustomize is at hand, the checks above must have seen what it
        # renders; resources compare as parsed YAML (kustomize sorts them by kind).
        def by_identity(resources):
            return sorted(resources, key=lambda r: (r["kind"], r["metadata"]["name"]))
        for r in self.renders:
            out = subprocess.run(
                ["kubectl", "kustomize", os.path.join(ROOT, "deploy/k8s", r.name)],
                check=True, capture_output=True, text=True).stdout
            real = [d for d in kustomize_lite.yaml.safe_load_all(out) if d is not None]
            self.assertEqual(by_identity(r.resources), by_identity(real), r.name)

    def test_operations_doc_names_the_adapter_metric(self):
        doc = read("docs/OPERATIONS.md")
        self.assertIn(QUEUE_METRIC, doc)
        self.assertIn("round_robin", doc)

    def test_the_docs_list_every_metric_the_server_defines(self):
        names = set()
        for folder, _, files in os.walk(os.path.join(ROOT, "server")):
            for name in files:
                if name.endswith(".cc"):
                    with open(os.path.join(folder, name)) as f:
                        names |= set(re.findall(r'"(clipserve_[a-z_]+)"', f.read()))
        self.assertGreater(len(names), 15)
        metrics_doc = read("docs/METRICS.md")
        operations = read("docs/OPERATIONS.md")
        for name in sorted(names):
            self.assertRegex(metrics_doc, rf"\b{name}\b", "docs/METRICS.md")
            self.assertRegex(operations, rf"`{name}[{{`]", "docs/OPERATIONS.md's list")

    def test_dockerfile(self):
        d = self.dockerfile
        self.assertGreaterEqual(len([k for k, _ in d.instructions if k == "FROM"]), 2)
        self.assertTrue(any("--from=build" in a for a in d.final_args("COPY")),
                        "the runtime stage copies from the build stage")
        exposed = {int(p.split("/")[0]) for a in d.final_args("EXPOSE") for p in a.split()}
        self.assertLessEqual({GRPC_PORT, METRICS_PORT}, exposed)
        health = d.final_args("HEALTHCHECK")
        self.assertEqual(len(health), 1, "one HEALTHCHECK")
        self.assertRegex(health[0], r"CMD .*clip_client.*health")
        self.assertEqual(d.entrypoint()[:1], ["clip_server"])
        # The health check asks the port the server listens on.
        self.assertIn(f"--port={GRPC_PORT}", d.entrypoint())
        self.assertRegex(health[0], rf"--target=localhost:{GRPC_PORT}\b")
        self.assertRegex(d.all_text, r"RUN [^\n]*scripts/install-deps\.sh")
        self.assertRegex(d.all_text, r"RUN [^\n]*ctest [^\n]*-L unit")
        self.assertRegex(d.all_text, r"ARG VARIANT")
        self.assertIn("download.pytorch.org/libtorch/cu", d.all_text)

    def test_compose(self):
        compose = kustomize_lite.load_documents(os.path.join(ROOT,
                                                             "deploy/docker-compose.yml"))[0]
        drain = float(self.server_flags["shutdown_grace_s"])
        replicas = [s for s in compose["services"].values()
                    if str(s.get("image", "")).startswith("clipserve")]
        self.assertGreaterEqual(len(replicas), 2)
        known = set(self.server_flags) | ABSL_BUILTIN_FLAGS
        for s in replicas:
            test = s.get("healthcheck", {}).get("test", [])
            test = test if isinstance(test, list) else shlex.split(test)
            self.assertIn("clip_client", " ".join(test))
            self.assertEqual(test[-1], "health")
            targets = {str(p).rsplit(":", 1)[-1] for p in s.get("ports", [])}
            self.assertLessEqual({str(GRPC_PORT), str(METRICS_PORT)}, targets)
            self.assertGreaterEqual(duration_seconds(s.get("stop_grace_period", "10s")),
                                    drain + BATCH_MARGIN_S)
            command = s.get("command", [])
            command = command if isinstance(command, list) else shlex.split(command)
            for arg in command:
                self.assertIn(arg[2:].partition("=")[0], known, arg)
            # Hardened as the configmap: no reflection, nothing published beyond the
            # host's loopback.
            self.assertIn("--reflection=false", command)
            # Compose restarts an exited container, never an unhealthy one.
            self.assertEqual(s.get("restart"), "unless-stopped")
            self.assertTrue(any(arg.startswith("--exit_after_unhealthy_s=") and
                                float(arg.partition("=")[2]) > 0 for arg in command),
                            command)
            for port in s.get("ports", []):
                self.assertTrue(str(port).startswith("127.0.0.1:"), port)
            # A share of the host each: unlimited, every replica sizes its threads to
            # all the host's cores.
            self.assertIn("cpus", s)
            self.assertIn("mem_limit", s)

    def test_install_deps_lists_python3_yaml(self):
        self.assertRegex(read("scripts/install-deps.sh"), r"\bpython3-yaml\b")


def main():
    global ROOT
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root", default=ROOT, help="repository root")
    args, rest = parser.parse_known_args()
    ROOT = os.path.abspath(args.root)
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
