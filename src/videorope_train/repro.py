"""`videorope-train repro`: a miniature reproduction of the papers' mechanism on a CPU (the lag probe).

The claim under test (VideoRoPE, docs/method.md): M-RoPE puts time on the highest rotary frequencies, whose phases
alias over long temporal distances, so a model that learned to attend "K frames back" confuses K with other lags once
videos are longer than in training; VideoRoPE's layout (time on the lowest frequencies, the diagonal layout, δ) does
not.  The probe: a "video" of one token per frame, each holding a random value (``classes`` of them); at every frame
j the model answers the value of frame j − ``lag``.  Train at ``train_frames``, test at ``test_frames`` (2×) and score
the answers at frames beyond the training length.  (Asking for the value K frames after a single marker frame, one
answer per video, left both arms near chance after 300 steps here — the answer is a two-hop lookup learnt from one
label per video; at every frame the same relation is one hop with a label per frame.)

Every arm is the project's own pipeline: a tiny random Qwen2-VL (``make-tiny-model``), prepared per variant with
``prepare-model`` and loaded through its remote code; positions come from the hooked model's ``get_rope_index``
for a real video block (grid T×2×2: one token per temporal patch).  Frames enter as ``inputs_embeds`` (a learned
embedding of the value), and a linear head reads every frame's hidden state.  A seed fixes the base model, the probe's
own parameters and the data, so the arms of one seed differ only in the RoPE variant.

Pre-registered criteria (``verdict``): validity — every run ≥ 0.99 at the training length (else "invalid: train
longer", not a null result); ordering — VideoRoPE ahead of M-RoPE beyond the training length in ≥ 7/8 of the seeds
and the 95% t-interval of the paired mean difference above 0; mechanism — lag 2·lag is M-RoPE's most frequent error
lag (pooled) and holds ≥ 25% of its errors in every seed that has errors where that lag exists (frames ≥ 2·lag).

What it does not test: with one token per frame h = w = t, so LTA and ATS (δ) cannot be separated here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from .files import write_json, write_text

ARMS = ("vanilla", "tad", "mrope", "mrope-interleaved", "videorope")  # RoPE variants the probe can train
BASELINE, CANDIDATE = "mrope", "videorope"  # the pair the criteria compare
VALIDITY_FLOOR = 0.99
WINS_FRACTION = 7 / 8
ALIAS_SHARE = 0.25
POSITION_BIN = 16  # frames per bin of the accuracy-by-position curve


@dataclass(frozen=True)
class ProbeSettings:
    lag: int = 101
    train_frames: int = 128
    test_frames: int = 256
    classes: int = 16
    steps: int = 300
    batch: int = 64
    lr: float = 1e-3
    eval_samples: int = 1024
    temporal_stride: float = 2.0  # VideoRoPE's δ
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 2
    mrope_section: tuple = (4, 6, 6)
    rope_theta: float = 1e4

    def __post_init__(self):
        if not 0 < self.lag < self.train_frames < self.test_frames:
            raise ValueError(f"need 0 < lag < train_frames < test_frames, got {self.lag}, {self.train_frames}, "
                             f"{self.test_frames}")
        if self.classes < 2 or self.steps < 1 or self.batch < 1 or self.eval_samples < 1:
            raise ValueError("classes >= 2, steps, batch and eval_samples >= 1 are needed")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "mrope_section": list(self.mrope_section)}


# ----------------------------------------------------------------------------------------------------- data


def make_batch(generator, count: int, frames: int, settings: ProbeSettings):
    """values [count, frames] (long, uniform over the classes); the answer at frame j is values[:, j - lag]."""
    import torch

    return torch.randint(0, settings.classes, (count, frames), generator=generator)


# ------------------------------------------------------------------------------------------------ the model


def model_dir(out: Path, variant: str, seed: int, settings: ProbeSettings) -> Path:
    """The prepared model of one arm (built once per seed and variant): ``make-tiny-model`` + ``prepare-model``."""
    from .hook.prepare import prepare_model
    from .rope import RopeConfig
    from .tiny import make_tiny_model

    root = out / "models" / f"seed-{seed}"
    base = root / "base"
    if not (base / "config.json").is_file():
        make_tiny_model(base, hidden_size=settings.hidden_size, num_layers=settings.layers, num_heads=settings.heads,
                        num_kv_heads=settings.kv_heads, mrope_section=settings.mrope_section,
                        rope_theta=settings.rope_theta, seed=seed)
    stride = settings.temporal_stride if variant == "videorope" else 1.0
    rope = RopeConfig(variant, temporal_stride=stride)
    if RopeConfig.of_model_dir(root / variant) == rope:
        return root / variant
    return prepare_model(base, root / variant, rope)


class LagProbe:
    """The hooked model with the probe's frame embedding and answer head."""

    def __init__(self, path: Path, settings: ProbeSettings, seed: int):
        import torch
        from transformers import AutoModelForImageTextToText

        loaded = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
        self.model = loaded.model  # the hooked *VLModel: positions, rotary, attention
        config = loaded.config
        self.ids = (config.vision_start_token_id, config.video_token_id, config.vision_end_token_id)
        self.merge = config.vision_config.spatial_merge_size
        hidden = config.text_config.hidden_size
        torch.manual_seed(seed)  # the same probe parameters for every arm of a seed
        self.values = torch.nn.Embedding(settings.classes, hidden)
        self.head = torch.nn.Linear(hidden, settings.classes)
        self._layouts: Dict[int, tuple] = {}

    def parameters(self):
        return [*self.model.parameters(), *self.values.parameters(), *self.head.parameters()]

    def train(self, mode: bool = True):
        for module in (self.model, self.values, self.head):
            module.train(mode)

    def layout(self, frames: int):
        """(input ids, positions [3, 1, L]) of a video of ``frames`` one-token frames, positions from the model's own
        ``get_rope_index`` (cached per length)."""
        import torch

        if frames not in self._layouts:
            start, video, end = self.ids
            input_ids = torch.tensor([[start] + [video] * frames + [end]])
            grid = torch.tensor([[frames, self.merge, self.merge]])  # H = W = one merged token
            positions, _ = self.model.get_rope_index(input_ids, video_grid_thw=grid)
            self._layouts[frames] = (input_ids, positions)
        return self._layouts[frames]

    def logits(self, values):
        """[count, frames, classes]: at every frame, the answer for the frame ``lag`` before it."""
        import torch

        count, frames = values.shape
        input_ids, positions = self.layout(frames)
        text = self.model.get_input_embeddings()(input_ids[0, [0, -1]])  # vision start / end, trained with the model
        embeds = torch.cat([text[0].expand(count, 1, -1), self.values(values), text[1].expand(count, 1, -1)], dim=1)
        hidden = self.model(inputs_embeds=embeds, position_ids=positions.expand(-1, count, -1)).last_hidden_state
        return self.head(hidden[:, 1:-1])


def train_and_test(out: Path, variant: str, seed: int, settings: ProbeSettings) -> dict:
    """One arm of one seed: train at ``train_frames``, test at both lengths; the per-seed record."""
    import torch

    torch.set_num_threads(1)  # runs go in parallel, one core each
    started = time.perf_counter()
    probe = LagProbe(model_dir(out, variant, seed, settings), settings, seed)
    data = torch.Generator().manual_seed(seed)  # the same batches for every arm of a seed
    optimizer = torch.optim.AdamW(probe.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps)
    probe.train()
    losses = []
    lag = settings.lag
    for _ in range(settings.steps):
        values = make_batch(data, settings.batch, settings.train_frames, settings)
        logits = probe.logits(values)[:, lag:]  # frames with a frame `lag` before them
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, settings.classes), values[:, :-lag].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())
    trained = time.perf_counter() - started
    probe.train(False)
    tests = torch.Generator().manual_seed(10_000 + seed)
    record = {"variant": variant, "seed": seed, "loss_first": float(losses[0]), "loss_last": float(losses[-1])}
    with torch.no_grad():
        for name, frames in (("train_length", settings.train_frames), ("test_length", settings.test_frames)):
            values = make_batch(tests, settings.eval_samples, frames, settings)
            predicted = torch.cat([probe.logits(values[i:i + 64]).argmax(-1) for i in range(0, len(values), 64)])
            record[name] = score(values, predicted, settings)
    record["seconds"] = {"train": trained, "total": time.perf_counter() - started}
    return record


def score(values, predicted, settings: ProbeSettings) -> dict:
    """Accuracy over the frames with an answer (j >= lag), overall and beyond the training length (j >=
    train_frames), by frame, and where the errors point: for each lag l, how many wrong answers at frame j equal the
    value at frame j - l (chance: 1 / classes of them per lag)."""
    import torch

    count, frames = values.shape
    lag = settings.lag
    frame = torch.arange(lag, frames).expand(count, -1)
    target, guess = values[:, :-lag], predicted[:, lag:]
    correct = guess == target
    beyond = frame >= settings.train_frames
    by_bin: Dict[int, float] = {}
    for start in range(lag // POSITION_BIN * POSITION_BIN, frames, POSITION_BIN):
        inside = (frame >= start) & (frame < start + POSITION_BIN)
        if bool(inside.any()):
            by_bin[start] = float(correct[inside].float().mean())
    rows, columns = (~correct).nonzero(as_tuple=True)
    lags: Counter = Counter()
    for row, column in zip(rows.tolist(), columns.tolist()):
        j = column + lag
        earlier = values[row, :j].flip(0)  # earlier[l - 1] is the frame l before j
        lags.update((torch.nonzero(earlier == guess[row, column])[:, 0] + 1).tolist())
    errors = len(rows)
    alias = 2 * lag
    with_alias = int((~correct & (frame >= alias)).sum())  # errors where lag 2·lag exists
    return {
        "accuracy": float(correct.float().mean()),
        "beyond_train": float(correct[beyond].float().mean()) if bool(beyond.any()) else None,
        "answers": correct.numel(), "answers_beyond_train": int(beyond.sum()),
        "errors": errors, "errors_where_alias_exists": with_alias,
        "error_lags": {str(l): c for l, c in sorted(lags.items())},
        "alias_share": lags.get(alias, 0) / with_alias if with_alias else None,
        "by_position": {str(start): accuracy for start, accuracy in sorted(by_bin.items())},
    }


# ------------------------------------------------------------------------------------------------ statistics


def t_quantile(probability: float, dof: int) -> float:
    """Student's t quantile (scipy's)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def paired_interval(differences: Sequence[float], level: float = 0.95) -> dict:
    """Mean of paired differences and its two-sided t-interval (None with fewer than two pairs)."""
    n = len(differences)
    mean = sum(differences) / n if n else None
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None}
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def sign_test(wins: int, n: int) -> float:
    """One-sided sign-test p-value: P(at least ``wins`` of ``n`` fair coin flips)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def verdict(records: Dict[str, Dict[int, dict]], settings: ProbeSettings) -> dict:
    """The three pre-registered criteria from the per-seed records ``{variant: {seed: record}}``."""
    runs = [record for by_seed in records.values() for record in by_seed.values()]
    low = min(run["train_length"]["accuracy"] for run in runs)
    validity = low >= VALIDITY_FLOOR
    seeds = sorted(set(records.get(BASELINE, {})) & set(records.get(CANDIDATE, {})))
    differences = [records[CANDIDATE][s]["test_length"]["beyond_train"]
                   - records[BASELINE][s]["test_length"]["beyond_train"] for s in seeds]
    wins = sum(d > 0 for d in differences)
    interval = paired_interval(differences)
    ordering = bool(seeds) and wins >= math.ceil(WINS_FRACTION * len(seeds)) and (interval["low"] or 0) > 0
    alias = 2 * settings.lag
    pooled: Counter = Counter()
    shares = {}
    for seed in seeds:
        result = records[BASELINE][seed]["test_length"]
        pooled.update({int(lag): count for lag, count in result["error_lags"].items()})
        if result["errors"]:
            shares[seed] = result["alias_share"] or 0.0
    most_frequent = pooled.most_common(1)[0][0] if pooled else None
    mechanism = most_frequent == alias and bool(shares) and all(v >= ALIAS_SHARE for v in shares.values())
    if not validity:
        outcome = f"invalid: a run reached only {low:.3f} at the training length (< {VALIDITY_FLOOR}): train longer"
    elif ordering and mechanism:
        outcome = "reproduced: VideoRoPE extrapolates where M-RoPE aliases, at the predicted lag"
    elif ordering:
        outcome = "ordering reproduced, mechanism not: M-RoPE's errors do not point at the predicted alias"
    else:
        outcome = "no evidence at this scale"
    return {
        "validity": validity, "ordering": ordering, "mechanism": mechanism, "outcome": outcome,
        "lowest_train_length_accuracy": low, "seeds": seeds, "differences": differences, "wins": wins,
        "sign_test_p": sign_test(wins, len(seeds)) if seeds else None, "interval": interval,
        "predicted_alias_lag": alias, "most_frequent_error_lag": most_frequent, "alias_shares": shares,
    }


# ------------------------------------------------------------------------------------------------ the command


def _run_path(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{variant}-seed{seed}.json"


def _one(task) -> dict:
    out, variant, seed, settings = task
    record = train_and_test(Path(out), variant, seed, settings)
    write_json(_run_path(Path(out), variant, seed), {"settings": settings.to_dict(), **record})
    return record


def run_repro(out: str | Path, seeds: int = 8, variants: Sequence[str] = (BASELINE, CANDIDATE), workers: int = 2,
              settings: Optional[ProbeSettings] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Train and test every (variant, seed) not done yet, then write repro.json / repro.md / repro.png."""
    settings = settings or ProbeSettings()
    out = Path(out)
    unknown = sorted(set(variants) - set(ARMS))
    if unknown or BASELINE not in variants or CANDIDATE not in variants:
        raise ValueError(f"variants must include {BASELINE} and {CANDIDATE}, among {ARMS}; got {list(variants)}")
    if seeds < 1:
        raise ValueError(f"need at least one seed, got {seeds}")
    pending, records = [], {variant: {} for variant in variants}
    for variant in variants:
        for seed in range(seeds):
            path = _run_path(out, variant, seed)
            if path.is_file() and not overwrite:
                saved = json.loads(path.read_text())
                if saved.pop("settings") != settings.to_dict():
                    raise ValueError(f"{path} was computed with other settings; use another --out, or --overwrite")
                records[variant][seed] = saved
            else:
                pending.append((str(out), variant, seed, settings))
    started = time.perf_counter()
    if pending:
        for seed in sorted({task[2] for task in pending}):  # bases first, once, before the workers race for them
            for variant in variants:
                model_dir(out, variant, seed, settings)
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(min(workers, len(pending))) as pool:
                done = pool.imap_unordered(_one, pending)
                for record in done:
                    records[record["variant"]][record["seed"]] = record
                    if progress:
                        _report_run(record, settings)
        else:
            for task in pending:
                record = _one(task)
                records[record["variant"]][record["seed"]] = record
                if progress:
                    _report_run(record, settings)
    result = {
        "settings": settings.to_dict(), "variants": list(variants), "seeds": seeds,
        "verdict": verdict(records, settings), "runs": {v: {str(s): r for s, r in sorted(by.items())}
                                                        for v, by in records.items()},
        "wall_seconds_this_call": time.perf_counter() - started, "versions": _versions(),
    }
    write_json(out / "repro.json", result)
    write_text(out / "repro.md", format_report(result))
    save_plot(result, out / "repro.png")
    return result


def _report_run(record: dict, settings: ProbeSettings) -> None:
    import sys

    test = record["test_length"]
    print(f"[repro] {record['variant']:9s} seed {record['seed']}: train length {record['train_length']['accuracy']:.3f}, "
          f"{settings.test_frames} frames beyond training {test['beyond_train']:.3f} "
          f"({record['seconds']['total']:.0f} s)", file=sys.stderr, flush=True)


def _versions() -> dict:
    import torch
    import transformers

    from . import __version__

    return {"videorope_train": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def format_report(result: dict) -> str:
    settings, variants, v = result["settings"], result["variants"], result["verdict"]
    lines = [f"# Lag probe: K = {settings['lag']}, trained at {settings['train_frames']} frames, tested at "
             f"{settings['test_frames']}", "",
             "| seed | " + " | ".join(f"{name} train / beyond" for name in variants)
             + f" | {CANDIDATE} − {BASELINE} | {BASELINE} errors at lag {2 * settings['lag']} |",
             "|---:|" + "---:|" * (len(variants) + 2)]
    for seed in range(result["seeds"]):
        row = [str(seed)]
        for name in variants:
            run = result["runs"][name].get(str(seed))
            row.append(f"{run['train_length']['accuracy']:.3f} / {run['test_length']['beyond_train']:.3f}"
                       if run else "—")
        difference = dict(zip(v["seeds"], v["differences"])).get(seed)
        share = v["alias_shares"].get(seed)
        row.append(f"{difference:+.3f}" if difference is not None else "—")
        row.append(f"{share:.0%}" if share is not None else "—")
        lines.append("| " + " | ".join(row) + " |")
    interval = v["interval"]
    lines += ["", f"Paired mean difference beyond training: {interval['mean']:+.3f}"
              + (f", 95% t-interval [{interval['low']:+.3f}, {interval['high']:+.3f}]" if interval["low"] is not None
                 else " (one seed: no interval)")
              + f"; {CANDIDATE} ahead in {v['wins']}/{len(v['seeds'])} seeds (one-sided sign test p = "
              f"{v['sign_test_p']:.4f}).",
              f"M-RoPE's most frequent error lag: {v['most_frequent_error_lag']} (predicted alias "
              f"{v['predicted_alias_lag']}; chance share per lag 1/{settings['classes']}).", "",
              f"Verdict: validity {v['validity']}, ordering {v['ordering']}, mechanism {v['mechanism']} — "
              f"**{v['outcome']}**."]
    return "\n".join(lines) + "\n"


def save_plot(result: dict, path: Path) -> Path:
    """Accuracy by the answer's frame per arm (mean over seeds, min–max shaded), and M-RoPE's pooled error lags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in result["variants"]:
        runs = list(result["runs"][name].values())
        starts = sorted({int(k) for run in runs for k in run["test_length"]["by_position"]})
        xs = [s + POSITION_BIN / 2 for s in starts]
        per_seed = [[run["test_length"]["by_position"].get(str(s)) for s in starts] for run in runs]
        columns = [[v for v in column if v is not None] for column in zip(*per_seed)]
        left.plot(xs, [sum(c) / len(c) for c in columns], marker="o", markersize=3, label=f"{name} (mean of "
                  f"{len(runs)} seeds)")
        left.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], alpha=0.2)
    left.axvline(settings["train_frames"], color="grey", linestyle="--", label="training length")
    left.set_xlabel("frame j answering (the value of frame j − K)")
    left.set_ylabel("accuracy")
    left.set_ylim(-0.02, 1.02)
    left.set_title(f"lag probe, K = {settings['lag']}, tested at {settings['test_frames']} frames")
    left.legend(fontsize=8, loc="lower left")
    pooled: Counter = Counter()
    errors = 0
    for run in result["runs"][BASELINE].values():
        pooled.update({int(k): c for k, c in run["test_length"]["error_lags"].items()})
        errors += run["test_length"]["errors"]
    if errors:
        lags = sorted(pooled)
        right.bar(lags, [pooled[lag] / errors for lag in lags], width=1.0, color="tab:blue", label=BASELINE)
        right.axhline(1 / settings["classes"], color="grey", linestyle=":", label=f"chance (1/{settings['classes']})")
        right.axvline(2 * settings["lag"], color="red", linestyle="--", alpha=0.6,
                      label=f"predicted alias, lag {2 * settings['lag']}")
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, f"{BASELINE} made no errors", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("lag l: the wrong answer at frame j is the value of frame j − l")
    right.set_ylabel(f"share of {BASELINE}'s errors")
    right.set_title(f"where {BASELINE}'s errors point ({errors} errors, pooled)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
