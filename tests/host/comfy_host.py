"""In-process ComfyUI host for the host tests (comfy-host.md §9.2).

Finds a ComfyUI checkout (``COMFYUI_PATH``, else ``~/ComfyUI``), puts it first on ``sys.path``,
forces CPU, registers the core and extra nodes, and loads this pack and the test-only pack
exactly as ComfyUI does (``nodes.load_custom_node``) from a temporary ``custom_nodes`` folder.
"""
import asyncio
import copy
import inspect
import json
import os
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PACK_NAME = "nested_split_elastic"
TEST_PACK_NAME = "nse_testing_pack"


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

    def pack_module(self, sub):
        """A submodule of the pack as ComfyUI imported it (its module name is the folder path)."""
        base = os.path.join(self.custom_nodes, PACK_NAME).replace(".", "_x_")
        return sys.modules[f"{base}.{sub}"]

    # -- whole graphs through the real executor ------------------------------------------
    def run_prompt(self, prompt, preview_hook=None):
        import execution

        class StubServer:
            client_id = "nse-test"
            last_node_id = None
            last_prompt_id = None
            sockets_metadata = {}

            def __init__(self):
                self.messages = []

            def send_sync(self, event, data, sid=None):
                self.messages.append((event, data))

            def queue_updated(self):
                pass

        pid = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            raise AssertionError(f"prompt invalid: {valid[1]} {json.dumps(valid[3], default=str)[:2000]}")
        server = StubServer()
        params = inspect.signature(execution.PromptExecutor.__init__).parameters
        kw = {"cache_args": {"lru": 0, "ram": 0}} if "cache_args" in params else {}
        ex = execution.PromptExecutor(server, **kw)
        ex.execute(prompt, pid, {"client_id": "nse-test"}, valid[2])
        return ex, server


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
