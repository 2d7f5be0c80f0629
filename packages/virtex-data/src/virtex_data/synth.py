"""The built-in captioned dataset: deterministic scenes of 1-4 shapes with dense captions.

Every image is drawn from a scene (objects with shape, colour, size class, position; a background
style), and its captions are written from the same scene: attributes, counts and spatial
relations ("a large red circle to the left of two small blue squares"). A single label (e.g. the
shape of the largest object) is a small part of what the captions say: the premise of VirTex.

``generate(outdir, train=20000, val=2000, size=64, seed=0)`` writes, COCO-style::

    OUTDIR/train/000000000001.png ...         OUTDIR/val/001000000001.png ...
    OUTDIR/annotations/captions_{split}.json  COCO captions (5 per image)
    OUTDIR/annotations/instances_{split}.json COCO instances: one category per shape, bbox,
                                              polygon segmentation, area, iscrowd = 0
    OUTDIR/annotations/attributes_{split}.json per-image labels for downstream probes

Each image depends only on ``(seed, split, index)``, so output is the same for any number of
worker processes. Train ids are ``1..N``; val ids are ``10**9 + 1 ..`` (disjoint, as in COCO).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm import tqdm

from virtex_data.atomic_file import atomic_write_text

__all__ = [
    "BACKGROUNDS",
    "CAPTION_ORDERS",
    "COLOURS",
    "SHAPES",
    "SIZES",
    "SceneObject",
    "Scene",
    "built_caption_order",
    "describe",
    "clear_previous",
    "generate",
    "render",
    "sample_scene",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 190),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
#: Size class -> radius as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.08, "medium": 0.12, "large": 0.17}
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "noisy")
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
_VAL_ID_OFFSET = 10**9
#: Orders in which captions name a scene's objects (:func:`describe`).
CAPTION_ORDERS = ("random", "salience")


@dataclass(frozen=True)
class SceneObject:
    """One shape: centre and radius in pixels, rotation in degrees (stars, triangles)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float

    def polygon(self) -> list[tuple[float, float]]:
        """Outline vertices (clockwise in image coordinates); circles use 32 vertices."""
        r, cx, cy = self.radius, self.cx, self.cy
        if self.shape == "circle":
            n, radii, phase = 32, [r], 0.0
        elif self.shape == "square":
            n, radii, phase = 4, [r], 45.0
        elif self.shape == "triangle":
            n, radii, phase = 3, [r], -90.0
        elif self.shape == "diamond":
            n, radii, phase = 4, [r], -90.0
        elif self.shape == "star":
            n, radii, phase = 10, [r, 0.45 * r], -90.0
        elif self.shape == "hexagon":
            n, radii, phase = 6, [r], 0.0
        else:
            raise ValueError(f"unknown shape {self.shape!r}")
        points = []
        for k in range(n):
            angle = math.radians(phase + 360.0 * k / n)
            radius = radii[k % len(radii)]
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points

    def area(self) -> float:
        """Polygon area (shoelace formula), in square pixels."""
        points = self.polygon()
        total = 0.0
        for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
            total += x0 * y1 - x1 * y0
        return abs(total) / 2.0

    def bbox(self) -> tuple[float, float, float, float]:
        """COCO box ``(x, y, width, height)`` of the polygon."""
        xs = [p[0] for p in self.polygon()]
        ys = [p[1] for p in self.polygon()]
        return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


@dataclass(frozen=True)
class Scene:
    """Objects (non-overlapping boxes) on a background, in an image of ``size`` pixels."""

    size: int
    background: str
    objects: tuple[SceneObject, ...]
    noise_seed: int = 0

    def largest(self) -> SceneObject:
        return max(self.objects, key=lambda o: (o.area(), -o.cx))

    def leftmost(self) -> SceneObject:
        return min(self.objects, key=lambda o: (o.cx, o.cy))


def sample_scene(rng: random.Random, size: int = 64) -> Scene:
    """A random scene of 1-4 objects whose boxes do not overlap (1 px apart)."""
    wanted = rng.randint(1, 4)
    objects: list[SceneObject] = []
    attempts = 0
    while len(objects) < wanted and attempts < 200:
        attempts += 1
        size_name = rng.choice(list(SIZES))
        radius = SIZES[size_name] * size
        cx = rng.uniform(radius + 1, size - radius - 1)
        cy = rng.uniform(radius + 1, size - radius - 1)
        candidate = SceneObject(
            rng.choice(SHAPES), rng.choice(list(COLOURS)), size_name, cx, cy, radius
        )
        box = candidate.bbox()
        if all(_apart(box, other.bbox()) for other in objects):
            objects.append(candidate)
    return Scene(size, rng.choice(BACKGROUNDS), tuple(objects), rng.randrange(2**31))


def _apart(a: tuple[float, ...], b: tuple[float, ...], gap: float = 1.5) -> bool:
    return (
        a[0] + a[2] + gap <= b[0]
        or b[0] + b[2] + gap <= a[0]
        or a[1] + a[3] + gap <= b[1]
        or b[1] + b[3] + gap <= a[1]
    )


def render(scene: Scene, supersample: int = 2) -> Image.Image:
    """Draw a scene as an RGB image (supersampled, then downsampled for smooth edges)."""
    side = scene.size * supersample
    grey = (128, 128, 128)
    image = Image.new("RGB", (side, side), grey)
    draw = ImageDraw.Draw(image)
    step = max(2, side // 8)
    if scene.background == "striped":
        for x in range(0, side, step):
            draw.rectangle([x, 0, x + step // 2 - 1, side], fill=(100, 100, 100))
    elif scene.background == "checkered":
        for x in range(0, side, step):
            for y in range(0, side, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=(150, 150, 150))
    elif scene.background == "noisy":
        noise = random.Random(scene.noise_seed)
        pixels = image.load()
        assert pixels is not None
        for y in range(0, side, supersample):
            for x in range(0, side, supersample):
                v = 128 + noise.randint(-25, 25)
                for dy in range(supersample):
                    for dx in range(supersample):
                        pixels[x + dx, y + dy] = (v, v, v)
    for obj in scene.objects:
        points = [(x * supersample, y * supersample) for x, y in obj.polygon()]
        draw.polygon(points, fill=COLOURS[obj.colour])
    if supersample > 1:
        image = image.resize((scene.size, scene.size), Image.Resampling.BOX)
    return image


# ---------------------------------------------------------------------------- captions
def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _phrase(obj: SceneObject, rng: random.Random, with_size: bool | None = None) -> str:
    show_size = rng.random() < 0.6 if with_size is None else with_size
    words = ([obj.size] if show_size else []) + [obj.colour, obj.shape]
    return _article(" ".join(words))


def _group(objects: Sequence[SceneObject]) -> str:
    """``"two blue squares and a red circle"``: objects grouped by (colour, shape)."""
    counts = Counter((o.colour, o.shape) for o in objects)
    parts = []
    for (colour, shape), n in counts.most_common():
        if n == 1:
            parts.append(_article(f"{colour} {shape}"))
        else:
            parts.append(f"{_NUMBERS[n]} {colour} {_plural(shape)}")
    return _join(parts)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _location(obj: SceneObject, size: int) -> str:
    col = ("left", "middle", "right")[min(2, int(3 * obj.cx / size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * obj.cy / size))]
    if row == col == "middle":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "middle":
        return f"at the {row}"
    return f"in the {row} {col} corner"


def _background(scene: Scene) -> str:
    return {
        "plain": "on a plain gray background",
        "striped": "on a striped background",
        "checkered": "on a checkered background",
        "noisy": "on a noisy gray background",
    }[scene.background]


def describe(scene: Scene, rng: random.Random, count: int = 5, order: str = "random") -> list[str]:
    """``count`` different captions of a scene (attributes, counts, relations, positions).

    ``order`` says which objects a caption names first: ``"random"`` (the default, the data of
    the task ablation), or ``"salience"``: largest first, as people name the most salient
    object first. Then lists of objects run from the largest down, the first relations have
    the largest object as their subject, and "where is what" captions name the two largest
    objects. The scene, the templates and the words are the same; only who comes first changes.
    """
    if order not in CAPTION_ORDERS:
        raise ValueError(f"caption order must be one of {CAPTION_ORDERS}, got {order!r}")
    salience = order == "salience"
    objects = list(scene.objects)
    if salience:
        objects.sort(key=lambda o: (o.area(), -o.cx), reverse=True)  # [0] is scene.largest()
    n = len(objects)
    templates = []
    # Counts and attributes of everything.
    if n == 1:
        only = objects[0]
        templates.append(f"{_phrase(only, rng, True)} {_background(scene)}")
        templates.append(f"a single {only.colour} {only.shape} {_location(only, scene.size)}")
        templates.append(f"one {only.size} {only.shape}, colored {only.colour}")
        templates.append(f"a {only.shape} {_background(scene)}, {_location(only, scene.size)}")
        templates.append(f"only one shape: {_phrase(only, rng, True)}")
    else:
        templates.append(f"{_NUMBERS[n]} shapes: {_group(objects)}")
        templates.append(f"{_group(objects)} {_background(scene)}")
    # Relations between pairs.
    pairs = [(a, b) for a in objects for b in objects if a is not b]
    rng.shuffle(pairs)
    if salience:  # the largest object is the subject first (the sort is stable: ties shuffled)
        rank = {id(o): k for k, o in enumerate(objects)}
        pairs.sort(key=lambda pair: rank[id(pair[0])])
    for a, b in pairs[:2]:
        templates.append(f"{_phrase(a, rng)} {_relation(a, b)} {_phrase(b, rng)}")
    # Largest and leftmost objects.
    largest = scene.largest()
    if n > 1:
        templates.append(
            f"the largest shape is {_phrase(largest, rng, False)}, {_location(largest, scene.size)}"
        )
        leftmost = scene.leftmost()
        templates.append(f"the leftmost shape is {_phrase(leftmost, rng, False)}")
    # Position of up to two objects (keeps captions under ~25 words).
    named = objects[: min(n, 2)] if salience else rng.sample(objects, min(n, 2))
    located = [f"{_phrase(o, rng)} {_location(o, scene.size)}" for o in named]
    templates.append(_join(located))
    # Counts per colour.
    colours = Counter(o.colour for o in objects)
    if n > 1:
        parts = [f"{_NUMBERS[k]} {c}" for c, k in colours.most_common()]
        templates.append(f"{_NUMBERS[n]} objects, {_join(parts)}")
    unique = list(dict.fromkeys(templates))
    rng.shuffle(unique)
    captions = unique[:count]
    while len(captions) < count:
        captions.append(f"{_phrase(rng.choice(objects), rng)} {_background(scene)}")
    return captions


def attributes(scene: Scene) -> dict[str, Any]:
    """Per-image probe labels: counts, the largest and the leftmost object, background."""
    largest, leftmost = scene.largest(), scene.leftmost()
    return {
        "num_objects": len(scene.objects),
        "largest_shape": largest.shape,
        "largest_colour": largest.colour,
        "leftmost_shape": leftmost.shape,
        "leftmost_colour": leftmost.colour,
        "background": scene.background,
        "shape_counts": {s: sum(o.shape == s for o in scene.objects) for s in SHAPES},
        "colour_counts": {c: sum(o.colour == c for o in scene.objects) for c in COLOURS},
    }


ATTRIBUTE_CLASSES: dict[str, list[Any]] = {
    "num_objects": [1, 2, 3, 4],
    "largest_shape": list(SHAPES),
    "largest_colour": list(COLOURS),
    "leftmost_shape": list(SHAPES),
    "leftmost_colour": list(COLOURS),
    "background": list(BACKGROUNDS),
}


# ---------------------------------------------------------------------------- generation
def image_id(split: str, index: int) -> int:
    """Image id of the ``index``-th image (0-based) of a split."""
    return index + 1 + (_VAL_ID_OFFSET if split == "val" else 0)


def _scene_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"virtex-synth/{seed}/{split}/{index}")


def _make_one(job: tuple[str, str, int, int, int, str, str]) -> dict[str, Any]:
    outdir, split, index, size, seed, image_format, order = job
    rng = _scene_rng(seed, split, index)
    scene = sample_scene(rng, size)
    captions = describe(scene, rng, order=order)
    ident = image_id(split, index)
    suffix = "jpg" if image_format == "jpeg" else "png"
    file_name = f"{ident:012d}.{suffix}"
    image = render(scene)
    path = Path(outdir) / split / file_name
    if image_format == "jpeg":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG", compress_level=1)
    objects = []
    for obj in scene.objects:
        x, y, w, h = obj.bbox()
        objects.append(
            {
                "category": obj.shape,
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "segmentation": [[round(v, 2) for p in obj.polygon() for v in p]],
                "area": round(obj.area(), 2),
            }
        )
    return {
        "id": ident,
        "file_name": file_name,
        "captions": captions,
        "objects": objects,
        "attributes": attributes(scene),
    }


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data))


#: What ``generate`` writes into its folder, and what the quickstart derives there.
_SYNTH_OUTPUTS = ("train", "val", "annotations")
# LMDB files, their lock files and what an interrupted build-lmdb left (``.lmdb.partial``).
_DERIVED_SUFFIXES = (".lmdb", ".lmdb-lock", ".lmdb.partial", ".lmdb.partial-lock")
_DERIVED_NAMES = ("tokenizer.json",)
_DESCRIPTION = "virtex built-in synthetic shapes"


def clear_previous(outdir: str | os.PathLike[str], overwrite: bool) -> list[Path]:
    """Make ``outdir`` ready for :func:`generate`: empty, or a previous synth dataset removed.

    A previous dataset is recognised by its ``annotations/captions_*.json`` (their ``info``
    names this generator). With ``overwrite`` its images and annotations are removed, and so is
    what was derived from them next to it (``*.lmdb`` files and their lock files,
    ``tokenizer.json``), so no stale LMDB or vocabulary outlives the images it was built from.

    Returns:
        The paths removed.

    Raises:
        FileExistsError: ``outdir`` is not empty and ``overwrite`` is false, or it holds files
            that are not a synth dataset or derived from one (nothing is removed then).
    """
    import shutil

    root = Path(outdir)
    if not root.exists():
        return []
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    entries = sorted(root.iterdir())
    if not entries:
        return []
    if not overwrite:
        raise FileExistsError(
            f"{root} is not empty ({len(entries)} entries, e.g. {entries[0].name}): pass "
            "--overwrite to replace a previous dataset there, or choose an empty folder"
        )
    if not _is_synth(root):
        raise FileExistsError(
            f"{root} holds files that are not a virtex synth dataset: --overwrite removes only "
            "a previous synth dataset; choose an empty folder"
        )
    ours = [
        entry
        for entry in entries
        if entry.name in _SYNTH_OUTPUTS
        or entry.name in _DERIVED_NAMES
        or entry.name.endswith(_DERIVED_SUFFIXES)
    ]
    for entry in ours:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return ours


def _synth_info(path: Path) -> dict[str, Any] | None:
    """The ``info`` of a caption file this module wrote (``None``: unreadable or another's)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8")).get("info", {})
    except (ValueError, OSError, AttributeError):
        return None
    if not isinstance(info, dict) or info.get("description") != _DESCRIPTION:
        return None
    return info


def _is_synth(root: Path) -> bool:
    found = False
    for split in ("train", "val"):
        path = root / "annotations" / f"captions_{split}.json"
        if not path.is_file():
            continue
        if _synth_info(path) is None:
            return False
        found = True
    return found


def built_caption_order(root: str | os.PathLike[str]) -> str | None:
    """The caption order of the built-in dataset in ``root`` (``None``: none there); files
    written before the option existed are ``"random"``."""
    info = _synth_info(Path(root) / "annotations" / "captions_val.json")
    return None if info is None else str(info.get("caption_order", "random"))


def generate(
    outdir: str | os.PathLike[str],
    train: int = 20000,
    val: int = 2000,
    size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    image_format: str = "png",
    progress: bool = True,
    caption_order: str = "random",
) -> dict[str, int]:
    """Write the built-in dataset (layout in the module docstring).

    Args:
        outdir: output folder (created).
        train: number of training images.
        val: number of validation images.
        size: image side in pixels.
        seed: the dataset is a function of ``seed`` (and the split sizes).
        workers: processes (default: all cores).
        image_format: ``"png"`` (lossless) or ``"jpeg"``.
        progress: show a tqdm bar.
        caption_order: which objects captions name first (:func:`describe`): ``"random"``
            or ``"salience"`` (largest first; the quickstart's data).

    Returns:
        Number of images per split.
    """
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if caption_order not in CAPTION_ORDERS:
        raise ValueError(f"caption_order must be one of {CAPTION_ORDERS}, got {caption_order!r}")
    root = Path(outdir)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    counts = {"train": train, "val": val}
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    category_ids = {c["name"]: c["id"] for c in categories}
    for split, total in counts.items():
        (root / split).mkdir(exist_ok=True)
        jobs = [
            (str(root), split, i, size, seed, image_format, caption_order) for i in range(total)
        ]
        if workers > 1 and total > 64:
            context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
            with context.Pool(workers) as pool:
                results = list(
                    tqdm(
                        pool.imap(_make_one, jobs, chunksize=64),
                        total=total,
                        desc=f"synth {split}",
                        disable=not progress,
                    )
                )
        else:
            results = [
                _make_one(j) for j in tqdm(jobs, desc=f"synth {split}", disable=not progress)
            ]
        images: list[dict[str, Any]] = []
        captions: list[dict[str, Any]] = []
        instances: list[dict[str, Any]] = []
        probes: list[dict[str, Any]] = []
        for record in results:
            images.append(
                {
                    "id": record["id"],
                    "file_name": record["file_name"],
                    "width": size,
                    "height": size,
                }
            )
            for caption in record["captions"]:
                captions.append(
                    {"id": len(captions) + 1, "image_id": record["id"], "caption": caption}
                )
            for obj in record["objects"]:
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": record["id"],
                        "category_id": category_ids[obj["category"]],
                        "bbox": obj["bbox"],
                        "segmentation": obj["segmentation"],
                        "area": obj["area"],
                        "iscrowd": 0,
                    }
                )
            probes.append({"image_id": record["id"], **record["attributes"]})
        info: dict[str, Any] = {"description": _DESCRIPTION, "seed": seed, "size": size}
        if caption_order != "random":  # the default's files stay as they were
            info["caption_order"] = caption_order
        _write_json(
            root / "annotations" / f"captions_{split}.json",
            {"info": info, "images": images, "annotations": captions},
        )
        _write_json(
            root / "annotations" / f"instances_{split}.json",
            {"info": info, "images": images, "annotations": instances, "categories": categories},
        )
        _write_json(
            root / "annotations" / f"attributes_{split}.json",
            {"info": info, "classes": ATTRIBUTE_CLASSES, "images": probes},
        )
    return counts
