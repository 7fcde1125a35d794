"""Drive the real ComfyUI host of scripts/setup_host.sh: start/stop a server, convert UI workflows, run prompts.

Shared by scripts/demo.py and the tests; standard library only.

    with ComfyServer() as server:
        prompt = ui_to_api(json.load(open("workflows/glaze_basic.json")), server.object_info)
        entry = server.run(prompt)            # = server.wait(server.submit(prompt))
        print(server.output_files(entry), texts(entry))

`ui_to_api` follows ComfyUI frontend 1.32 (the one 0.3.75 ships): `graphToPrompt`, `ExecutableNodeDTO`
(bypass/reroute resolution) and the widget constructors that decide which inputs own `widgets_values`.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DIR = os.path.join(ROOT, ".host", "ComfyUI")
HOST_PYTHON = os.path.join(ROOT, ".host", "venv", "bin", "python")


class ComfyError(RuntimeError):
    """ComfyUI rejected or failed a prompt; str() carries ComfyUI's own message."""


class ValidationError(ComfyError):
    """POST /prompt answered 400 (the graph failed validation)."""


class ExecutionError(ComfyError):
    """The prompt was accepted but a node raised (history status "error")."""


# ----------------------------------------------------------------------------------------------- server
class ComfyServer:
    """A ComfyUI server on 127.0.0.1 (free port) with its own input/output/temp/user dirs, in-memory database.

    workdir: where those dirs and server.log go (a fresh temp dir, removed on exit, when None).
    cpu: pass --cpu (default: when torch, if importable here, sees no CUDA device).
    """

    def __init__(self, workdir: str | None = None, cpu: bool | None = None, startup_timeout: float = 180.0,
                 extra_args: tuple[str, ...] = ()):
        if not os.path.isfile(os.path.join(HOST_DIR, "main.py")) or not os.path.isfile(HOST_PYTHON):
            raise FileNotFoundError(f"no ComfyUI host in {HOST_DIR}: run bash scripts/setup_host.sh")
        if cpu is None:
            try:
                import torch
                cpu = not torch.cuda.is_available()
            except ImportError:
                cpu = True
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="comfy-server-"))
        self.input_dir, self.output_dir, self.temp_dir, self.user_dir = (
            os.path.join(self.workdir, d) for d in ("input", "output", "temp", "user"))
        self.log_path = os.path.join(self.workdir, "server.log")
        self.cpu, self.startup_timeout, self.extra_args = cpu, startup_timeout, tuple(extra_args)
        self.port, self.process, self._log, self._object_info = 0, None, None, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            os.makedirs(d, exist_ok=True)
        with socket.socket() as s:  # a free loopback port (tiny race with other processes: acceptable)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [HOST_PYTHON, os.path.join(HOST_DIR, "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--input-directory", self.input_dir, "--output-directory", self.output_dir,
               "--temp-directory", self.temp_dir, "--user-directory", self.user_dir,
               *(["--cpu"] if self.cpu else []), *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=HOST_DIR, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self._object_info = self._request("GET", "/object_info", timeout=30)
                return
            except OSError:  # URLError, refused, reset, timeout: not up yet
                exited = self.process.poll() is not None
                if exited or time.monotonic() > deadline:
                    why = (f"exited with code {self.process.returncode}" if exited
                           else f"did not answer within {self.startup_timeout:.0f} s")
                    message = f"ComfyUI {why} while starting; log {self.log_path}:\n{self.log_tail()}"
                    self.stop()
                    raise ComfyError(message) from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no server log)"

    # ------------------------------------------------------------------------------------------ HTTP API
    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    @property
    def object_info(self) -> dict:
        """GET /object_info as fetched at start-up (node types, their inputs, input_order, ...)."""
        return self._object_info

    def submit(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id. Raises ValidationError with ComfyUI's messages on a 400."""
        try:
            answer = self._request("POST", "/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", errors="replace")
            try:
                message = format_validation_error(json.loads(raw))
            except (ValueError, AttributeError):
                message = f"POST /prompt answered {e.code}: {raw}"
            raise ValidationError(message) from None
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800.0, poll: float = 0.5) -> dict:
        """Poll /history/{id} until the prompt finished; returns its history entry.

        Raises ExecutionError (with the node type and exception message) when the run failed, TimeoutError
        when it did not finish in time, ComfyError when the server died.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = (self._request("GET", f"/history/{prompt_id}") or {}).get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("status_str") == "error":
                raise ExecutionError(format_execution_error(entry))
            if status.get("completed"):
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise ComfyError(f"ComfyUI died (code {self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s:\n{self.log_tail(20)}")
            time.sleep(poll)

    def run(self, prompt: dict, timeout: float = 1800.0) -> dict:
        return self.wait(self.submit(prompt), timeout)

    def output_files(self, entry: dict) -> list[str]:
        """Absolute paths of the images/files a history entry's nodes saved (output and temp folders)."""
        roots = {"output": self.output_dir, "temp": os.path.join(self.temp_dir, "temp"), "input": self.input_dir}
        paths = []
        for node_out in entry.get("outputs", {}).values():
            for key in ("images", "audio", "files"):
                for item in node_out.get(key) or []:
                    if isinstance(item, dict) and "filename" in item:
                        paths.append(os.path.join(roots.get(item.get("type"), self.output_dir),
                                                  item.get("subfolder", ""), item["filename"]))
        return paths


def texts(entry: dict) -> dict[str, list[str]]:
    """The text a history entry's nodes showed in the UI ("text" of PreviewAny / ui.PreviewText), by node id."""
    found = {}
    for node_id, node_out in entry.get("outputs", {}).items():
        values = node_out.get("text")
        if values:
            found[node_id] = [v if isinstance(v, str) else json.dumps(v) for v in values]
    return found


def format_validation_error(answer: dict) -> str:
    """One readable text from POST /prompt's 400 body: {"error": {...}, "node_errors": {id: {...}}}."""
    err = answer.get("error") or {}
    lines = [err if isinstance(err, str) else ": ".join(x for x in (err.get("message"), err.get("details")) if x)]
    for node_id, node_err in (answer.get("node_errors") or {}).items():
        for e in node_err.get("errors", []):
            lines.append(f"node {node_id} ({node_err.get('class_type')}): {e.get('message')}"
                         + (f": {e['details']}" if e.get("details") else ""))
    return "\n".join(lines)


def format_execution_error(entry: dict) -> str:
    for name, msg in (entry.get("status") or {}).get("messages") or []:
        if name == "execution_error":
            return (f"{msg.get('node_type')} (node {msg.get('node_id')}) failed: "
                    f"{msg.get('exception_type')}: {msg.get('exception_message')}")
        if name == "execution_interrupted":
            return f"execution interrupted at {msg.get('node_type')} (node {msg.get('node_id')})"
    return f"execution failed: {json.dumps(entry.get('status'))}"


# ------------------------------------------------------------------------------------ UI → API conversion
# Input types that the frontend draws as widgets (scripts/widgets.ts ComfyWidgets); anything else is a socket.
WIDGET_TYPES = {"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR", "IMAGEUPLOAD", "IMAGECOMPARE",
                "CHART", "GALLERIA", "TEXTAREA"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")  # extensions/core/uploadImage.ts
CONTROL_MODES = {"fixed", "increment", "decrement", "randomize", "increment-wrap"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # frontend-only, never sent
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    """A UI workflow that cannot be converted; the message names the node and what is wrong."""


def _ordered_specs(info: dict) -> list[tuple[str, list, str]]:
    """(name, spec, section) of a node type's inputs in the frontend's order (nodeDefOrderingUtil.ts)."""
    specs, order = [], info.get("input_order") or {}
    for section in ("required", "optional"):
        declared = info.get("input", {}).get(section) or {}
        names = [n for n in order.get(section, []) if n in declared]
        specs += [(n, declared[n], section) for n in names + [n for n in declared if n not in names]]
    return specs


def widget_slots(info: dict) -> list[tuple[str, str]]:
    """What each entry of a node's `widgets_values` is, in order: (input name, "value" | "control" |
    "filter" | "upload"). Only "value" entries reach the API prompt; the others are UI-only widgets."""
    slots, upload = [], False
    for name, spec, section in _ordered_specs(info):
        kind, opts = _input_kind(spec)
        if kind is None:
            continue
        slots.append((name, "value"))
        control = opts.get("control_after_generate", name in ("seed", "noise_seed") if kind == "INT" else False)
        if control and kind == "INT":
            slots.append((name, "control"))
        elif control and kind == "COMBO":  # a combo's control also gets a filter-list text widget
            slots += [(name, "control"), (name, "filter")]
        upload |= kind == "COMBO" and section == "required" and any(opts.get(k) for k in UPLOAD_OPTIONS)
    if upload:  # the "choose file to upload" button comes last and saves the value "image"
        slots.append(("upload", "upload"))
    return slots


def _input_kind(spec) -> tuple[str | None, dict]:
    """("INT" | "COMBO" | ..., options) for a widget input, (None, options) for a link-only socket."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    kind = "COMBO" if isinstance(spec[0], list) else opts.get("widgetType") or spec[0]
    return (kind if kind in WIDGET_TYPES and not opts.get("forceInput") else None), opts


def _links_by_id(workflow: dict) -> dict:
    """Link id -> (origin id, origin slot, target id, target slot, type); UI 0.4 lists or schema-1 objects."""
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[link[0]] = (str(link[1]), int(link[2]), str(link[3]), int(link[4]), link[5])
    return links


def _valid_connection(a, b) -> bool:
    """LiteGraph.isValidConnection: wildcards, exact match, or comma-separated type lists that overlap."""
    a, b = ("" if t in (None, "*") else str(t).lower() for t in (a, b))
    return not a or not b or a == b or bool(set(a.split(",")) & set(b.split(",")))


class _Resolver:
    """Follows a link to the real node output feeding it, as ExecutableNodeDTO.resolveInput/Output do."""

    def __init__(self, nodes: dict, links: dict):
        self.nodes, self.links = nodes, links

    def input(self, node_id: str, slot: int, seen: set, wanted_type=None):
        if (node_id, "in", slot) in seen:
            raise WorkflowError(f"circular links through node {node_id}")
        seen.add((node_id, "in", slot))
        inputs = self.nodes[node_id].get("inputs") or []
        link_id = inputs[slot].get("link") if slot < len(inputs) else None
        if link_id is None:
            return None
        if link_id not in self.links:
            raise WorkflowError(f"node {node_id} input {inputs[slot].get('name')!r}: link {link_id} is not in links")
        origin, origin_slot, _, _, _ = self.links[link_id]
        return self.output(origin, origin_slot, wanted_type or inputs[slot].get("type"), seen)

    def output(self, node_id: str, slot: int, wanted_type, seen: set):
        node = self.nodes.get(node_id)
        if node is None:
            return None
        if node.get("mode") == BYPASSED:  # pass through the first input of a matching type
            idx = self._bypass_slot(node, slot, wanted_type)
            return None if idx < 0 else self.input(node_id, idx, seen)
        if node.get("type") in VIRTUAL_NODES:  # Reroute: its input; PrimitiveNode/Note: nothing
            has_input = slot < len(node.get("inputs") or [])
            return self.input(node_id, slot, seen, wanted_type) if has_input else None
        return [node_id, slot]

    @staticmethod
    def _bypass_slot(node: dict, slot: int, wanted) -> int:
        inputs, outputs = node.get("inputs") or [], node.get("outputs") or []
        if not inputs:
            return -1
        if wanted in (None, "", "*"):
            return slot if slot < len(inputs) else 0
        out_type = outputs[slot].get("type") if slot < len(outputs) else None
        fits = [_valid_connection(i.get("type"), out_type) and _valid_connection(i.get("type"), wanted)
                for i in inputs]
        if slot < len(inputs) and fits[slot]:
            return slot
        exact = [i for i, inp in enumerate(inputs) if inp.get("type") == wanted]
        return exact[0] if exact else (fits.index(True) if True in fits else -1)


def _widget_inputs(node: dict, info: dict) -> dict:
    """{input name: value} from a node's widgets_values, positionally, as LGraphNode.configure assigns them."""
    values, slots, inputs = node.get("widgets_values"), widget_slots(info), {}
    if isinstance(values, dict):  # some nodes save {name: value}
        return {k: v for k, v in values.items() if (k, "value") in slots}
    values, specs = list(values or []), {name: spec for name, spec, _ in _ordered_specs(info)}
    for i, (name, role) in enumerate(slots):
        if role == "control" and i < len(values) and values[i] not in CONTROL_MODES:
            raise WorkflowError(f"node {node['id']} ({node['type']}): widgets_values[{i}] = {values[i]!r} should be "
                                f"the control_after_generate mode of {name!r} (one of {sorted(CONTROL_MODES)})")
        if role == "value" and i < len(values):
            inputs[name] = values[i]
        elif role == "value":  # a missing trailing value keeps the new widget's default, as in the frontend
            opts = _input_kind(specs[name])[1]
            choices = specs[name][0] if isinstance(specs[name][0], list) else opts.get("options") or [None]
            if opts.get("default", choices[0]) is not None:
                inputs[name] = opts.get("default", choices[0])
    return inputs


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI (litegraph) workflow into the API prompt that the ComfyUI frontend would queue.

    Widget values map onto the node type's widget inputs in `input_order`; links (including widgets
    converted to inputs) override them; PrimitiveNode values are pushed into the widgets they feed;
    Reroutes and bypassed (mode 4) nodes are looked through; muted (mode 2) nodes, Notes and other
    frontend-only nodes are dropped, and inputs left pointing at a dropped node are removed.
    """
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("workflows with subgraphs are not supported: unpack them in the UI first")
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    links = _links_by_id(workflow)
    pushed: dict[str, dict] = {}  # PrimitiveNode.applyToGraph
    for node in nodes.values():
        if node.get("type") == "PrimitiveNode" and node.get("widgets_values"):
            for link_id in ((node.get("outputs") or [{}])[0].get("links") or []):
                _, _, target, target_slot, _ = links[link_id]
                target_inputs = nodes[target].get("inputs") or []
                widget = target_inputs[target_slot].get("widget") if target_slot < len(target_inputs) else None
                if widget:
                    pushed.setdefault(target, {})[widget["name"]] = node["widgets_values"][0]
    resolver, prompt = _Resolver(nodes, links), {}
    for node_id, node in nodes.items():
        if node.get("type") in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        info = object_info.get(node.get("type"))
        if info is None:
            raise WorkflowError(f"node {node_id}: type {node.get('type')!r} is not on this server (a missing custom "
                                "node?)")
        widgets = {**_widget_inputs(node, info), **pushed.get(node_id, {})}
        # list values are wrapped so the server does not read them as links (graphToPrompt does the same)
        inputs = {k: {"__value__": v} if isinstance(v, list) else v for k, v in widgets.items()}
        for slot, inp in enumerate(node.get("inputs") or []):
            source = resolver.input(node_id, slot, set())
            if source is not None:
                inputs[inp["name"]] = source
        prompt[node_id] = {"inputs": inputs, "class_type": node["type"],
                           "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
    for entry in prompt.values():  # "Remove inputs connected to removed nodes"
        for name, value in list(entry["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del entry["inputs"][name]
    return prompt
