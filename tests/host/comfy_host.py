"""In-process ComfyUI host for the host tests.

Finds a ComfyUI checkout (``COMFYUI_PATH``, else ``~/ComfyUI``), puts it first on ``sys.path``,
forces CPU, registers the core and extra nodes, and loads this pack and the test-only pack
exactly as ComfyUI does (``nodes.load_custom_node``) from a temporary ``custom_nodes`` folder.
"""
import asyncio
import copy
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PACK_NAME = "nested_split_elastic"
TEST_PACK_NAME = "nse_testing_pack"
#: the input types that the graph editor shows as widgets
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


def find_comfy():
    """(path, reason): the ComfyUI checkout to test against, or None and why not."""
    cands = [p for p in os.environ.get("COMFYUI_PATH", "").split(os.pathsep) if p]
    if not cands:
        cands = [os.path.expanduser("~/ComfyUI")]
    for p in cands:
        if os.path.isfile(os.path.join(p, "main.py")) and os.path.isdir(os.path.join(p, "comfy")):
            return os.path.abspath(p), None
    return None, (f"no ComfyUI checkout found (looked at {', '.join(cands)}); set COMFYUI_PATH to a ComfyUI "
                  "checkout and run with a python that has its requirements")


def custom_nodes_dir():
    """A temporary custom_nodes folder holding links to this pack and the test-only pack."""
    d = tempfile.mkdtemp(prefix="nse_custom_nodes_")
    os.symlink(ROOT, os.path.join(d, PACK_NAME))
    os.symlink(os.path.join(HERE, "testing_pack"), os.path.join(d, TEST_PACK_NAME))
    return d


class Host:
    def __init__(self, path):
        self.path = path
        if path not in sys.path:
            sys.path.insert(0, path)
        from comfy.cli_args import args, LatentPreviewMethod
        args.cpu = True
        args.preview_method = LatentPreviewMethod.Latent2RGB
        import comfy.model_management  # noqa: F401  (reads args.cpu at import)
        try:  # as main.py does: bind ComfyUI's `utils` package before nodes.py puts comfy/ on sys.path
            import utils.extra_config  # noqa: F401
            import utils.install_util  # noqa: F401
        except ImportError:
            pass
        import nodes
        self.nodes = nodes
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        self.custom_nodes = custom_nodes_dir()
        for name in (PACK_NAME, TEST_PACK_NAME):
            ok = asyncio.run(nodes.load_custom_node(os.path.join(self.custom_nodes, name)))
            if not ok:
                raise RuntimeError(f"ComfyUI failed to load {name}")
        import comfyui_version
        self.version = comfyui_version.__version__

    def node(self, name):
        return self.nodes.NODE_CLASS_MAPPINGS[name]

    def input_specs(self, name):
        """[(name, kind, options, required)] of a node; kind is a widget type or 'LINK:<TYPE>'."""
        spec = self.node(name).INPUT_TYPES()
        out = []
        for section in ("required", "optional"):
            for inp, s in (spec.get(section) or {}).items():
                typ, opts = s[0], (s[1] if len(s) > 1 and isinstance(s[1], dict) else {})
                if isinstance(typ, (list, tuple)):
                    out.append((inp, "COMBO", dict(opts, options=list(typ)), section == "required"))
                elif typ in WIDGET_TYPES:
                    out.append((inp, typ, dict(opts), section == "required"))
                else:
                    out.append((inp, f"LINK:{typ}", dict(opts), section == "required"))
        return out

    def widget_defaults(self, name):
        """{widget: value} of a new node's required widgets, as the graph editor fills them in."""
        d = {}
        for inp, kind, opts, required in self.input_specs(name):
            if kind in WIDGET_TYPES and required:
                d[inp] = opts["options"][0] if kind == "COMBO" and "default" not in opts else opts.get("default")
        return d

    def pack_module(self, sub):
        """A submodule of the pack as ComfyUI imported it (its module name is the folder path)."""
        base = os.path.join(self.custom_nodes, PACK_NAME).replace(".", "_x_")
        return sys.modules[f"{base}.{sub}"]

    # -- whole graphs through the real executor ------------------------------------------
    def supports_per_prompt_preview_method(self):
        """True when this version picks the preview method per prompt from ``extra_data["preview_method"]``
        (upstream #11261: ``execution`` imports ``latent_preview.set_preview_method`` and calls it with it)."""
        import execution
        return callable(getattr(execution, "set_preview_method", None))

    def run_prompt(self, prompt, preview_method=None, extra_data=None):
        """Validate and execute an API prompt as the server's prompt worker does; returns ``(executor, server)``.

        ``preview_method`` ("none", "latent2rgb", ...) is sent per prompt as the frontend sends its
        ``Comfy.Execution.PreviewMethod`` setting, on versions that read it (else the CLI default is used).
        ``server.messages`` holds every ``(event, data)`` sent, progress and binary previews included."""
        import execution
        pid = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise AssertionError(f"prompt invalid: {valid[1]} {json.dumps(valid[3], default=str)[:2000]}")
        server = StubServer()
        extra = {"client_id": server.client_id, **(extra_data or {})}
        if preview_method is not None and self.supports_per_prompt_preview_method():
            extra["preview_method"] = preview_method
        ex = make_executor(server)
        restore = hijack_progress(server)
        try:
            server.last_prompt_id = pid
            ex.execute(prompt, pid, extra, valid[2])
        finally:
            restore()
        return ex, server


class StubServer:
    """Stands in for ``server.PromptServer`` where the executor and progress handlers use it:
    ``client_id``, ``last_node_id``, ``last_prompt_id``, ``sockets_metadata``, ``send_sync``,
    ``queue_updated``, ``send_progress_text``.  Every message is kept in ``messages``."""
    client_id = "nse-test"

    def __init__(self):
        self.messages = []
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"node": node_id, "text": text}))

    def queue_updated(self):
        pass

    def previews(self):
        """The binary preview messages sent (as main.py's progress hook sends them)."""
        return [d for e, d in self.messages if not isinstance(e, str)]


def executor_options():
    """``PromptExecutor`` keyword arguments as this checkout's ``main.py`` ``prompt_worker`` builds them from
    its CLI arguments (defaults here), found by feature detection:

    * ``PromptExecutor(server, cache_type, cache_size)`` (no ``cache_args``): v0.3.x, classic cache
      unless ``--cache-lru`` / ``--cache-none``;
    * ``cache_args`` and a scalar ``--cache-ram``: ``{"lru", "ram"}``, classic cache unless a flag says otherwise;
    * ``cache_args`` and ``--cache-ram [active [inactive]]`` (a list): the RAM-pressure cache is the default and
      ``cache_args`` carries ``{"lru", "ram", "ram_inactive"}`` headrooms derived from the machine's RAM.
    """
    import execution
    import comfy.model_management as mm
    from comfy.cli_args import args
    ct = execution.CacheType
    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    lru = getattr(args, "cache_lru", 0) or 0
    none = bool(getattr(args, "cache_none", False))
    classic = bool(getattr(args, "cache_classic", False))
    cache_none = getattr(ct, "NONE", None) or getattr(ct, "DEPENDENCY_AWARE")
    ram = getattr(args, "cache_ram", 0)
    if isinstance(ram, (list, tuple)):
        cache_ram = cache_ram_inactive = 0
        if not classic and not none and lru <= 0:
            cache_ram = min(10.0, max(2.0, mm.total_ram * 0.10 / 1024.0))
            cache_ram_inactive = min(128.0, mm.total_ram / 1024.0)
            if len(ram) > 0:
                cache_ram = ram[0]
            if len(ram) > 1:
                cache_ram_inactive = ram[1]
        cache_type = (ct.CLASSIC if classic else ct.LRU if lru > 0 else cache_none if none else ct.RAM_PRESSURE)
        cache_args = {"lru": lru, "ram": cache_ram, "ram_inactive": cache_ram_inactive}
    else:
        ram = ram or 0
        cache_type = ct.CLASSIC
        if lru > 0:
            cache_type = ct.LRU
        elif ram > 0 and hasattr(ct, "RAM_PRESSURE"):
            cache_type = ct.RAM_PRESSURE
        elif none:
            cache_type = cache_none
        cache_args = {"lru": lru, "ram": ram}
    if "cache_args" in params:
        return {"cache_type": cache_type, "cache_args": cache_args}
    return {"cache_type": cache_type, "cache_size": lru}


def make_executor(server):
    """A fresh ``execution.PromptExecutor`` built as ``main.py`` builds it (one per prompt here: no
    cross-prompt cache between tests)."""
    import execution
    return execution.PromptExecutor(server, **executor_options())


def hijack_progress(server):
    """Install the progress hook ``main.py`` installs (``hijack_progress``): it raises on interrupt, sends
    ``progress`` and, for clients without preview metadata, the binary preview.  The previously installed
    hook (e.g. the tests' ``progress`` fixture) is still called.  Returns a function that restores it."""
    import comfy.model_management
    import comfy.utils
    try:
        from protocol import BinaryEventTypes
        preview_event = BinaryEventTypes.UNENCODED_PREVIEW_IMAGE
    except ImportError:
        preview_event = 2
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        get_executing_context = lambda: None   # noqa: E731
    try:
        from comfy_execution.progress import get_progress_state
    except ImportError:
        get_progress_state = None
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        ctx = get_executing_context()
        if prompt_id is None and ctx is not None:
            prompt_id = ctx.prompt_id
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        if previous is not None:
            previous(value, total, preview_image, prompt_id=prompt_id, node_id=node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()
        prompt_id = server.last_prompt_id if prompt_id is None else prompt_id
        node_id = server.last_node_id if node_id is None else node_id
        if get_progress_state is not None:
            get_progress_state().update_progress(node_id, value, total, preview_image)
        server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id},
                         server.client_id)
        if preview_image is not None:
            server.send_sync(preview_event, preview_image, server.client_id)

    comfy.utils.set_progress_bar_global_hook(hook)
    return lambda: comfy.utils.set_progress_bar_global_hook(previous)


def mock_api_workflow(prompt, kind):
    """Swap the nodes that need real weights for the test-only mocks, keeping the graph and our nodes."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            node["class_type"] = "NSETestMockCheckpoint"
            inputs["kind"] = kind
        elif ct == "CLIPTextEncode":
            node["class_type"] = "NSETestMockTextEncode"
        elif ct == "VAEDecode":
            node["class_type"] = "NSETestMockVAEDecode"
        elif ct == "SaveImage":
            node["class_type"] = "PreviewImage"
            inputs.pop("filename_prefix", None)
    return p


def custom_advanced_prompt(guider, sampler, sigmas, width=64, height=64, text="a nest"):
    """A mock-model API prompt around core SamplerCustomAdvanced.

    ``guider``/``sampler``/``sigmas`` are ``(class_type, inputs)``; inputs may link to the mock
    checkpoint's MODEL ``["1", 0]`` and the prompts ``["2", 0]`` (positive) / ``["3", 0]`` (negative).
    The output image is node "11".
    """
    return {
        "1": {"class_type": "NSETestMockCheckpoint", "inputs": {"ckpt_name": "x", "kind": "sd15"}},
        "2": {"class_type": "NSETestMockTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "NSETestMockTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": guider[0], "inputs": guider[1]},
        "5": {"class_type": sampler[0], "inputs": sampler[1]},
        "6": {"class_type": sigmas[0], "inputs": sigmas[1]},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["4", 0],
                                                                "sampler": ["5", 0], "sigmas": ["6", 0],
                                                                "latent_image": ["8", 0]}},
        "10": {"class_type": "NSETestMockVAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }


# -- a real main.py server on a loopback port -------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``main.py --cpu`` of a checkout on 127.0.0.1 with this pack and the test-only pack loaded.

    ``Server(path, python, extra_args).start()`` returns once ``/object_info/NestedKSampler``
    answers (or raises with the log's tail); ``stop()`` ends it.  Everything it writes stays in a
    temporary folder (outputs, inputs, user settings, database).
    """

    def __init__(self, path, python=None, extra_args=(), prefix="nse_server_", env=None):
        self.path, self.python, self.extra_args = path, python or sys.executable, list(extra_args)
        self.env = None if env is None else {**os.environ, **env}
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.tmp, "server.log")
        self.proc = None

    def command(self):
        tmp = self.tmp
        yaml_path = os.path.join(tmp, "extra_model_paths.yaml")
        with open(yaml_path, "w") as f:
            f.write(f"nse_test:\n    base_path: {tmp}\n    custom_nodes: {custom_nodes_dir()}\n")
        for d in ("out", "in", "user"):
            os.makedirs(os.path.join(tmp, d), exist_ok=True)
        return [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--extra-model-paths-config", yaml_path,
                "--output-directory", os.path.join(tmp, "out"), "--input-directory", os.path.join(tmp, "in"),
                "--temp-directory", tmp, "--user-directory", os.path.join(tmp, "user"),
                "--database-url", f"sqlite:///{os.path.join(tmp, 'db.sqlite')}", "--disable-auto-launch",
                *self.extra_args]

    def start(self, timeout=120.0):
        import urllib.request
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), cwd=self.path, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.base}/object_info/NestedKSampler", timeout=2) as r:
                    if r.status == 200 and "NestedKSampler" in json.loads(r.read()):
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("ComfyUI server did not come up:\n" + open(self.log_path).read()[-3000:])

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if getattr(self, "_log", None) is not None:
            self._log.close()
