"""Resume for NestedKSampler: the state that travels with the output latent, and its checks.

A NestedKSampler's ``latent`` output carries ``LATENT["nested_state"]``: the outer step reached,
the outer state there (model space, CPU), and a fingerprint of what fixes the outer trajectory
(seed, outer schedule, latent).  Connected to the ``resume`` input of a NestedKSampler with the
same fingerprint, the run continues from that outer step; every random stream is keyed by the
outer step, so stop-then-resume equals the uninterrupted run bit for bit.  Prompts, cfg and the
inner settings may change on resume (the paper's user intervention).
"""
from __future__ import annotations

import hashlib

import torch

STATE_KEY = "nested_state"
VERSION = 1
#: inputs that fix the outer trajectory: a resume must use the same values
TRAJECTORY = ("seed", "outer_steps", "outer_scheduler", "denoise")


def fingerprint(latent: dict, sigmas, **settings) -> dict:
    """What a resume must match: the trajectory inputs, the outer sigmas and the input latent."""
    h = hashlib.blake2b(digest_size=16)
    for key in ("samples", "noise_mask"):
        t = latent.get(key)
        if isinstance(t, torch.Tensor):
            h.update(key.encode() + str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(repr(latent.get("batch_index")).encode())
    return {**{k: settings[k] for k in TRAJECTORY}, "sigmas": [float(s) for s in sigmas], "latent": h.hexdigest()}


def saved_state(out: dict, state: dict, fp: dict) -> dict:
    """The ``nested_state`` entry of the output latent ``out``."""
    return {"version": VERSION, "step": int(state["step"]), "total": len(fp["sigmas"]) - 1,
            "x": state["x"].detach().to("cpu", torch.float32).clone(), "fingerprint": fp,
            "samples": out["samples"]}


def check_resume(resume, fp: dict):
    """``{"step", "x"}`` to continue from, or None when ``resume`` is not connected.

    Raises ValueError naming the input that differs from the run being resumed."""
    if resume is None:
        return None
    state = resume.get(STATE_KEY) if isinstance(resume, dict) else None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError("resume must be the 'latent' output of a NestedKSampler (it carries no Nested "
                         "state); leave resume unconnected to start a new run")
    if resume.get("samples") is not state["samples"] and not torch.equal(resume["samples"], state["samples"]):
        raise ValueError("resume: this latent was changed after the Nested run that made it (by another node); "
                         "connect the NestedKSampler's 'latent' output to resume directly")
    old = state["fingerprint"]
    for key in TRAJECTORY:
        if old[key] != fp[key]:
            raise ValueError(f"resume: {key} must be the same as in the run being resumed ({old[key]!r}, now "
                             f"{fp[key]!r}); a resume continues the same outer schedule and noise")
    if old["latent"] != fp["latent"]:
        raise ValueError("resume: latent_image must be the same latent as in the run being resumed (same "
                         "size, batch, contents and noise mask)")
    if old["sigmas"] != fp["sigmas"]:
        raise ValueError("resume: the model's noise schedule differs from the run being resumed (another "
                         "model type or sampling patch); connect the same model family")
    return {"step": state["step"], "x": state["x"]}
