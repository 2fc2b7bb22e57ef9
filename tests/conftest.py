import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")  # test-only start-up for subprocesses
FLASH_ATTN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "torch_flash_attn")


@pytest.fixture(scope="session")
def flash_attn_cpu():
    """The flash_attn package of tools/torch_flash_attn, accepted by transformers on CPU in this process; returns
    the module."""
    import sys

    sys.path.insert(0, SITE)
    import flash_attn_cpu_device

    flash_attn_cpu_device.install()
    import flash_attn

    return flash_attn


def fresh_process_env() -> dict:
    """This process's environment without the test-only start-up (tests/site on PYTHONPATH, FLASH_ATTN_CPU*,
    VIDEOROPE_*): a child started with it imports the flash_attn the machine has, not the stand-in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASH_ATTN_CPU", "VIDEOROPE_"))}
    path = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep)
            if entry and os.path.abspath(entry) != SITE]
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def stand_in_loaded() -> bool:
    """Whether this process made transformers take tools/torch_flash_attn on CPU (test_flash_attention.py;
    transformers keeps the functions it imported, so an installed flash-attn cannot come back in this process)."""
    import sys

    return getattr(sys.modules.get("flash_attn_cpu_device"), "_installed", False)


def run_in_fresh_process(nodeid: str) -> None:
    """Run one test in a child pytest with ``fresh_process_env`` and require that it passed (not skipped)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", nodeid],
                            cwd=root, env=fresh_process_env(), capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and "1 passed" in summary and "skipped" not in summary, (
        f"{nodeid} in a fresh process: {summary}\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def free_ports(count=1):
    """Ports free on this machine now, one per launch, so tests and their torchrun / Slurm jobs can run side by
    side (a fixed MASTER_PORT, or torchrun's default 29500, collides)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port():
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")  # every family the hook serves; tests parametrise over it


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from videorope_train.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-base")


@pytest.fixture(scope="session")
def hooked_dir(tiny_base, tmp_path_factory):
    """hooked_dir(variant, family="qwen2_vl", **rope_settings) -> a prepared model directory (made once each)."""
    from videorope_train.hook.prepare import prepare_model
    from videorope_train.rope import RopeConfig
    from videorope_train.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("hooked")
    bases = {"qwen2_vl": tiny_base}
    made = {}

    def make(variant="videorope", family="qwen2_vl", **settings):
        if family not in bases:
            bases[family] = make_tiny_model(root / f"base-{family}", family=family)
        key = (variant, family, tuple(sorted(settings.items())))
        if key not in made:
            name = f"tiny-{variant}" if family == "qwen2_vl" else f"tiny-{family}-{variant}"
            made[key] = prepare_model(bases[family], root / str(len(made)) / name, RopeConfig(variant, **settings))
        return made[key]

    return make


def load_hooked(path):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    return model.eval()


def video_frames(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def make_inputs(path, prompts, padding_side="left"):
    """prompts: list of (kind, text) with kind in {"video", "image", "text"} -> processor batch."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    processor.tokenizer.padding_side = padding_side
    texts, videos, images = [], [], []
    for index, (kind, text) in enumerate(prompts):
        content = [{"type": kind}] if kind != "text" else []
        content.append({"type": "text", "text": text})
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                   tokenize=False))
        if kind == "video":
            videos.append(video_frames(4 + 2 * index, 56, 84, seed=index))
        elif kind == "image":
            images.append(video_frames(1, 84, 56, seed=10 + index)[0])
    return processor(text=texts, videos=videos or None, images=images or None, padding=True, return_tensors="pt")


@pytest.fixture(scope="session")
def demo_dataset_dir(tmp_path_factory):
    """The repo's dataset_info.json next to freshly made demo videos, images and JSON."""
    import shutil
    from pathlib import Path

    from videorope_train.data.demo import make_demo_data

    root = tmp_path_factory.mktemp("data")
    shutil.copy(Path(__file__).resolve().parents[1] / "data" / "dataset_info.json", root / "dataset_info.json")
    make_demo_data(root)
    return root
