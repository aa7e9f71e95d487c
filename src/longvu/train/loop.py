"""Fine-tuning LongVU on video SFT data (``longvu train``), with the transformers ``Trainer``.

    data.jsonl -> per example: prompt ids (the first question, as inference builds them),
    the rest of the conversation and its labels (answers only)
    -> forward: encoded video (computed once per video) -> :func:`longvu.model.compose.compose`,
    the very stages inference runs (budgets, text-guided selection, STC, prompt template),
    with gradients -> the LLM on ``inputs_embeds`` with labels

The Trainer brings gradient accumulation, mixed precision, gradient checkpointing, the
learning-rate schedule, checkpoints and resume, DDP under ``torchrun`` / ``accelerate
launch``, and the progress bar.  What trains (``TrainConfig.train``):

* ``projector``: ``mm_projector`` and ``image_newline``; the cached sampler outputs stay valid;
* ``sva``: the rest of the connector (tower projections, the SVA sampler, its queries); each
  video's frozen tower features are kept in memory so the sampler runs again each step;
* ``connector``: both of the above;
* ``llm``: the decoder, through LoRA (``lora=True``, peft) or in full.

The vision towers stay frozen (as in the paper), so a video is decoded and encoded once:
later epochs read its features from the feature cache (or memory, without a cache).

Labels: -100 (ignored) on the system prompt, every user turn, the role headers and the
visual tokens; each assistant turn's text and its end-of-turn marker are learned.  A
multi-turn example's video tokens are composed for its first question, as a chat's first
answer sees them; later turns follow as text.  A line with no video is a text-only
conversation: its prompt goes to the LLM as text, through the same composition.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import LongVUError, install_hint
from ..files import atomic_write_text
from ..loading.adapter import CONNECTOR_FILE, LLM_FILE, MANIFEST, write_manifest
from ..loading.quantize import quiet_quantizers
from ..model.compose import compose
from ..model.observe import Observer
from ..model.prompt import check_message, reserved_markers
from ..pipeline.api import LongVU
from ..pipeline.cache import FeatureCache
from .config import PARTS, TrainConfig
from .data import DataError, Example, load_examples, resolve_data

IGNORE_INDEX = -100
SVA_PREFIXES = ("mm_projector_aux_", "vision_sampler_0", "vision_query")
PROJECTOR_PREFIXES = ("mm_projector.", "image_newline")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STATE_FILE = "trainable.safetensors"  # a checkpoint's trained tensors
COMPLETE = "longvu_complete"  # written last into a checkpoint folder: only complete ones are resumed
LOG_FILE = "train_log.jsonl"


@dataclass
class Sample:
    """One example, tokenized: ``prompt_ids`` (with the video placeholder), then ``rest_ids`` / ``rest_labels``."""

    video: str | None  # None: text-only
    prompt_ids: list[int]
    rest_ids: list[int]
    rest_labels: list[int]


# ------------------------------------------------------------------ data
def example_tokens(lv, ex: Example) -> Sample:
    """Tokenize one example as inference would see it; ValueError if a turn cannot be used."""

    markers = reserved_markers(lv.tokenizer)
    turns = [("user" if role == "human" else "assistant", text) for role, text in ex.turns]
    turns[0] = ("user", ex.prompt)
    for i, (role, text) in enumerate(turns):
        check_message(text.strip(), markers, f"turn {i + 1} ({role})")
    tok = lv.tokenizer
    conv = lv.conversation(turns=turns[:1], video=ex.video is not None)
    prompt_ids, _ = lv.prompt_ids(conv)
    text = conv.render(tok)
    stop = conv.stop_str
    stop_ids = tok(stop, add_special_tokens=False).input_ids
    rest: list[int] = []
    labels: list[int] = []
    for role, content in turns[1:]:
        if role == "assistant":
            ids = tok(content.strip(), add_special_tokens=False).input_ids + stop_ids
            rest, labels = rest + ids, labels + ids
            conv.add_assistant(content.strip())
            text += content.strip() + stop
            continue
        conv.add_user(content)
        full = conv.render(tok)
        if not full.startswith(text):
            raise ValueError("the chat template does not extend the conversation turn by turn")
        ids = tok(full[len(text) :], add_special_tokens=False).input_ids
        rest, labels, text = rest + ids, labels + [IGNORE_INDEX] * len(ids), full
    return Sample(None if ex.video is None else str(ex.video), prompt_ids, rest, labels)


class ConversationDataset(torch.utils.data.Dataset):
    """The examples of a training JSONL, tokenized up front (a bad line fails before training)."""

    def __init__(self, lv, examples: list[Example], source: Path) -> None:
        self.samples: list[Sample] = []
        errors = []
        for ex in examples:
            try:
                self.samples.append(example_tokens(lv, ex))
            except (ValueError, LongVUError) as e:
                errors.append(f"{source}:{ex.line}: {e}")
        if errors:
            raise DataError(errors[:50], len(errors))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def collate(batch: list[Sample]) -> dict:
    """Samples pass through as they are; :class:`LongVUForTraining` composes each one."""
    return {"samples": list(batch)}


# ------------------------------------------------------------------ features
class _TowerCapture(Observer):
    """Keeps each frame's frozen SigLIP and DINOv2 features (the sampler's inputs) on the host."""

    needs_encoder = True

    def __init__(self) -> None:
        self.dino: dict[int, torch.Tensor] = {}
        self.siglip: dict[int, torch.Tensor] = {}

    def on_window(self, *, positions, pixels, features, siglip_pixels) -> None:
        for p, f in zip(positions, features.detach().cpu()):
            self.dino[p] = f

    def on_siglip_chunk(self, *, positions, features, aux, sampled) -> None:
        for p, f in zip(positions, features.detach().cpu()):
            self.siglip[p] = f


@dataclass
class VideoEntry:
    feats: object  # VisualFeatures
    towers: tuple[torch.Tensor, torch.Tensor] | None  # [K, 576, C] SigLIP and DINOv2 of the stored frames


class FeatureStore:
    """The question-independent encoding of each training video, computed once.

    With the sampler frozen, :meth:`LongVU.features` (the feature cache) holds everything;
    a model without a cache keeps them in memory.  With the sampler training, the towers'
    outputs for the stored frames are kept in memory instead.
    """

    def __init__(self, lv, sva: bool) -> None:
        self.lv, self.sva = lv, sva
        self.memory: dict[str, VideoEntry] = {}
        self.encoded = 0  # videos decoded and encoded by this store

    def get(self, video: str) -> VideoEntry:
        if video in self.memory:
            return self.memory[video]
        if not self.sva:
            feats = self.lv.features(video)
            self.encoded += not feats.from_cache
            entry = VideoEntry(feats, None)
            if self.lv.cache is None:
                self.memory[video] = entry
            return entry
        capture = _TowerCapture()
        feats = self.lv.features(video, observer=capture)
        self.encoded += 1
        towers = (torch.stack([capture.siglip[p] for p in feats.stored]),
                  torch.stack([capture.dino[p] for p in feats.stored]))  # fmt: skip
        self.memory[video] = entry = VideoEntry(feats, towers)
        return entry

    def prepare(self, samples: list[Sample], lines: list[str], progress: bool) -> None:
        """Encode every video before training, so a broken one stops the run at once (naming its line)."""
        # lazy: tqdm is imported only when this runs (keeps the import light and quiet)
        from tqdm.auto import tqdm

        videos = {s.video: where for s, where in zip(samples, lines) if s.video is not None}
        for video, where in tqdm(videos.items(), desc="encoding videos", disable=not progress, leave=False):
            try:
                self.get(video)
            except LongVUError as e:
                raise LongVUError(f"{where}: {e}") from None


# ------------------------------------------------------------------ model
class LongVUForTraining(nn.Module):
    """The pipeline as one trainable module: ``forward(samples)`` -> the LM loss over the answers."""

    def __init__(self, lv, store: FeatureStore) -> None:
        super().__init__()
        self.llm = lv.model.llm
        self.connector = lv.model.connector
        self.lv, self.store = lv, store
        self.truncated = 0

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kw) -> None:
        """Recompute the decoder's activations in the backward pass (the Trainer's ``activation_checkpointing``)."""
        args = activation_checkpointing_kwargs or {"use_reentrant": False}
        if hasattr(self.llm, "activation_checkpointing_enable"):
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=args, **kw)
        else:  # transformers before the rename
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def sample_inputs(self, s: Sample) -> tuple[torch.Tensor, list[int]]:
        """``[L, H]`` input embeddings (the same composition as inference) and the ``[L]`` labels."""

        model = self.lv.model
        feats = None if s.video is None else self.video_features(s.video)
        comp = compose(model, feats, s.prompt_ids)
        prompt = comp.embeds[0]
        rest = model.embed(s.rest_ids).to(prompt.dtype) if s.rest_ids else prompt[:0]
        embeds = torch.cat([prompt, rest])
        labels = [IGNORE_INDEX] * prompt.shape[0] + s.rest_labels
        room = model.max_positions
        if embeds.shape[0] > room:
            self.truncated += 1
            embeds, labels = embeds[:room], labels[:room]
        return embeds, labels

    def video_features(self, video: str):
        """The video's features, with the sampler's output recomputed (with gradients) when it trains."""
        model = self.lv.model
        entry = self.store.get(video)
        feats = entry.feats
        if entry.towers is not None:  # the sampler trains: run it again on the frozen tower outputs
            conn, dt = self.connector, next(self.connector.parameters()).dtype
            aux = conn.project_aux([t.to(model.device, dt) for t in entry.towers])
            sampled = conn.sample(aux, feats.frame_hw, fix_orientation=model.cfg.fix_unpad_orientation)
            return dataclasses.replace(feats, sampled=sampled)
        # encoder output may be an inference tensor: a plain copy can be saved for backward
        return dataclasses.replace(feats, sampled=feats.sampled.to(model.device).clone())

    def forward(self, samples: list[Sample]):
        pairs = [self.sample_inputs(s) for s in samples]
        length = max(e.shape[0] for e, _ in pairs)
        dev = pairs[0][0].device
        embeds = torch.zeros(len(pairs), length, pairs[0][0].shape[-1], dtype=pairs[0][0].dtype, device=dev)
        labels = torch.full((len(pairs), length), IGNORE_INDEX, dtype=torch.long, device=dev)
        mask = torch.zeros(len(pairs), length, dtype=torch.long, device=dev)
        for i, (e, lab) in enumerate(pairs):  # right padding, as the reference trains
            embeds[i, : e.shape[0]] = e
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long, device=dev)
            mask[i, : e.shape[0]] = 1
        full = bool(mask.all())  # no padding: no mask, so attention takes its causal fast path
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=None if full else mask, use_cache=False)
        # lazy: transformers is imported only when this runs (keeps the import light and quiet)
        from transformers.modeling_outputs import CausalLMOutput

        return CausalLMOutput(loss=answer_loss(hidden.last_hidden_state, labels, self.llm.lm_head))


def answer_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """The causal LM loss (mean over labelled tokens), with the vocabulary projection applied only where a
    label is: the full ``[B, L, V]`` logits of a long video prompt (8k x 152k floats for Qwen2) are never built.

    Args:
        hidden: ``[B, L, H]`` the decoder's last hidden states.
        labels: ``[B, L]`` token ids, IGNORE_INDEX where nothing is learned.
    """
    target = labels[:, 1:]
    where = target != IGNORE_INDEX
    logits = lm_head(hidden[:, :-1][where]).float()  # [T, V]
    return nn.functional.cross_entropy(logits, target[where])


def check_parts(parts: tuple[str, ...] | list[str]) -> set[str]:
    """The ``--train`` list as a set of ``projector``, ``sva``, ``llm``."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise LongVUError(f"--train takes a comma-separated list of {', '.join(PARTS)}; got {','.join(parts)!r}")
    if "towers" in parts:
        raise LongVUError(
            "training the vision towers is not supported: their features are computed once per video "
            "(train connector and llm)"
        )
    out = set(parts) - {"connector"}
    if "connector" in parts:
        out |= {"projector", "sva"}
    return out


def mark_trainable(lv, parts: set[str], cfg: TrainConfig):
    """Freeze everything, then unfreeze what ``parts`` names; returns the peft model with LoRA, else None."""
    model = lv.model
    for p in list(model.llm.parameters()) + list(model.connector.parameters()):
        p.requires_grad_(False)
    peft_model = None
    if "llm" in parts and cfg.lora:
        # lazy: imported under the statement around it (warnings silenced, or only on this branch)
        from ..loading.quantize import quiet_quantizers

        try:
            with quiet_quantizers():  # peft imports torchao when it is installed
                # lazy: imported under the statement around it (warnings silenced, or only on this branch)
                from peft import LoraConfig, get_peft_model
        except ImportError:
            raise LongVUError(f"--lora needs peft: {install_hint('train')}") from None

        present = {n.rsplit(".", 1)[-1] for n, _ in model.llm.named_modules()}
        targets = [t for t in LORA_TARGETS if t in present]
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
        # lazy: imported under the statement around it (warnings silenced, or only on this branch)
        from ..loading.adapter import peft_quietly

        with peft_quietly():
            peft_model = get_peft_model(model.llm, lcfg)  # injects the LoRA layers into model.llm in place
    elif "llm" in parts:
        for p in model.llm.parameters():  # the vocabulary fitted to the tokenizer (model._fit_vocab) too
            p.requires_grad_(True)
    for name, p in model.connector.named_parameters():
        if ("sva" in parts and name.startswith(SVA_PREFIXES)) or (
            "projector" in parts and name.startswith(PROJECTOR_PREFIXES)
        ):
            p.requires_grad_(True)
    return peft_model


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in module.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------ trainer
def _trainer_classes():
    """The Trainer and callbacks, built on first use (transformers' Trainer imports accelerate)."""
    try:
        # lazy: guarded, to say which extra is missing
        from transformers import Trainer, TrainerCallback
    except ImportError as e:  # the Trainer needs accelerate
        raise LongVUError(f"training needs the train extra: {install_hint('train')} ({e})") from None
    # lazy: transformers is imported only when this runs (keeps the import light and quiet)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class LongVUTrainer(Trainer):
        """Checkpoints hold only the trained tensors (not the frozen base), loaded back by name."""

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            # lazy: safetensors is imported only when this runs (keeps the import light and quiet)
            from safetensors.torch import save_file

            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                save_file(trainable_state(self.model), os.path.join(output_dir, STATE_FILE))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            # lazy: safetensors is imported only when this runs (keeps the import light and quiet)
            from safetensors.torch import load_file

            load_into(model or self.model, load_file(os.path.join(resume_from_checkpoint, STATE_FILE)))

    class LogCallback(TrainerCallback):
        """``train_log.jsonl``: one line per logged step; marks each checkpoint complete once written."""

        def __init__(self, out: Path) -> None:
            self.path = out / LOG_FILE

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:  # a resumed run drops the lines logged after its checkpoint
                keep = [x for x in _read_log(self.path) if x["step"] <= state.global_step]
                atomic_write_text(self.path, "".join(json.dumps(x) + "\n" for x in keep))

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                line = {"step": state.global_step, "loss": logs["loss"], "lr": logs.get("learning_rate"),
                        "grad_norm": logs.get("grad_norm"), "epoch": logs.get("epoch")}  # fmt: skip
                with open(self.path, "a") as f:
                    f.write(json.dumps(line) + "\n")

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    (folder / COMPLETE).write_text("complete\n")

    class LossBar(ProgressCallback):
        """The Trainer's progress bar, with the last loss beside it instead of a printed dict per log."""

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    return LongVUTrainer, LogCallback, LossBar, (ProgressCallback, PrinterCallback)


def load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise LongVUError(f"the checkpoint holds tensors this run does not train ({missing[0]}, ...)")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].dtype))


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder (one cut off while written has no marker)."""
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / COMPLETE).is_file() and p.name[11:].isdigit()]
    return max(done, key=lambda p: int(p.name[11:]), default=None)


def training_arguments(cfg: TrainConfig, out: Path, device):
    # lazy: transformers is imported only when this runs (keeps the import light and quiet)
    from transformers import TrainingArguments

    if cfg.precision not in ("no", "bf16", "fp16"):
        raise LongVUError(f"--precision must be no, bf16 or fp16, got {cfg.precision!r}")
    try:
        return _arguments(TrainingArguments, cfg, out, device)
    except ValueError as e:  # e.g. an unknown schedule name
        raise LongVUError(f"bad training option: {str(e).splitlines()[0]}") from None


def _arguments(cls, cfg: TrainConfig, out: Path, device):
    return cls(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed,
        bf16=cfg.precision == "bf16", fp16=cfg.precision == "fp16", remove_unused_columns=False, report_to=[], dataloader_num_workers=0, use_cpu=device.type == "cpu",
        disable_tqdm=not cfg.progress, save_only_model=False, **_checkpointing(cls, cfg.gradient_checkpointing),
    )  # fmt: skip


def _checkpointing(cls, on: bool) -> dict:
    """Gradient checkpointing under the name this transformers knows (``activation_checkpointing`` from 5.x)."""
    if not on:
        return {}

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(cls).parameters else None
    return {name or "gradient_checkpointing": True}


def _device(cfg: TrainConfig) -> str:
    """Under torchrun / accelerate launch, each process takes the GPU of its local rank."""
    rank = os.environ.get("LOCAL_RANK")
    if rank is not None and cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(rank)}"
    return cfg.device


def _check_out(cfg: TrainConfig, out: Path) -> None:

    if cfg.resume:
        return
    if (out / "checkpoints").is_dir() or (out / MANIFEST).is_file() or (out / LOG_FILE).is_file():
        raise LongVUError(f"--out {out} holds an earlier run: pass --resume to continue it, or another --out")


def train(cfg: TrainConfig, *, callbacks: list | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.data``; returns the output folder (see :func:`save_outputs`)."""

    with quiet_quantizers():  # the first transformers import of a run loads torchao (when installed), which notes
        # lazy: imported under the statement around it (warnings silenced, or only on this branch)
        from transformers import set_seed  # missing CUDA kernels; the Trainer's imports below find it loaded

    out = Path(cfg.out)
    parts = check_parts(cfg.train)
    _check_out(cfg, out)
    examples = load_examples(cfg.data, video_root=cfg.video_root)
    source = resolve_data(cfg.data)
    cache = False if cfg.no_cache else FeatureCache(cfg.cache_dir)
    lv = LongVU.from_pretrained(cfg.model, device=_device(cfg), dtype=cfg.dtype, siglip=cfg.siglip,
                                dinov2=cfg.dinov2, overrides=cfg.overrides or None, cache=cache)  # fmt: skip
    dataset = ConversationDataset(lv, examples, source)
    set_seed(cfg.seed)  # LoRA's initial weights
    peft_model = mark_trainable(lv, parts, cfg)
    store = FeatureStore(lv, sva="sva" in parts)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lines = [f"{source}:{ex.line}" for ex in examples]  # under DDP each process encodes its share up front
    store.prepare(dataset.samples[rank::world], lines[rank::world], cfg.progress and rank == 0)
    wrapper = LongVUForTraining(lv, store)
    out.mkdir(parents=True, exist_ok=True)
    trainer_cls, log_cb, bar_cb, default_cbs = _trainer_classes()
    trainer = trainer_cls(model=wrapper, args=training_arguments(cfg, out, lv.device), train_dataset=dataset,
                          data_collator=collate, callbacks=[log_cb(out), *(callbacks or [])])  # fmt: skip
    for cb in default_cbs:  # the Trainer's bar / log printer: ours shows the loss on the bar
        trainer.remove_callback(cb)
    if cfg.progress:
        trainer.add_callback(bar_cb)
    resume = last_checkpoint(out / "checkpoints") if cfg.resume else None
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        save_outputs(lv, wrapper, peft_model, out, parts=parts, overrides=cfg.overrides)
    return out


def save_outputs(
    lv, wrapper: LongVUForTraining, peft_model, out: Path, *, parts: set[str], overrides: dict | None = None
) -> None:
    """Write the adapter folder: peft's LoRA files, ``connector.safetensors`` / ``llm.safetensors``, manifest last."""

    # lazy: safetensors is imported only when this runs (keeps the import light and quiet)
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".adapter-"))
    try:
        if peft_model is not None:
            peft_model.save_pretrained(str(tmp), save_embedding_layers=False)  # LoRA only: embeddings are the base's
        conn = {f"model.{k}": v for k, v in trainable_state(wrapper.connector).items()}
        if conn:
            save_file(conn, str(tmp / CONNECTOR_FILE))
        if "llm" in parts and peft_model is None:
            save_file(trainable_state(wrapper.llm), str(tmp / LLM_FILE))
        files = [item.name for item in tmp.iterdir()]
        for name in files:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_manifest(out, lv.model, lora=peft_model is not None, trained=sorted(parts), files=files,
                   overrides=overrides)  # fmt: skip
