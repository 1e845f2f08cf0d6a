"""`conta data check` and `conta data prepare`: what a dataset root holds, what is missing or
broken, and the one-off derived files (tag caches, COCO masks) made before a long run rather
than inside it.

The check never stops at the first problem, so one run lists everything a user has to fetch or
fix. It decodes every image and mask of the splits it covers (in a process pool, with a progress
bar): a truncated JPEG, an empty or RGB mask, a mask value outside the classes or a mask of
another size than its image is reported by kind, with a count and the first paths. For COCO it
builds (and caches) the per-split index, which needs pycocotools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conta.config import DataConfig
from conta.data.build import build_dataset, dataset_entry, ensure_dataset
from conta.data.integrity import FilePair, inspect_pair
from conta.data.voc import VOC_CLASSES, VOCLayoutDataset, read_id_list
from conta.data.voc12 import LIST_COUNTS, MASK_DIRS, list_candidates, missing_list_hint, resolve_voc_root
from conta.engine.device import cores_per_process
from conta.engine.parallel import run_parallel
from conta.errors import ContaError, DataError

SHOWN = 3  # files named per missing folder or per kind of broken file


@dataclass
class CheckReport:
    """Lines to print; `problems` are what stops the pipeline (missing or broken files)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str, label: str = "MISSING") -> None:
        self.problems.append(text)
        self.lines.append(f"  {label} {text}")

    def text(self) -> str:
        verdict = ("OK: nothing required is missing and every file decodes" if self.ok
                   else f"{len(self.problems)} problem(s): see MISSING and BAD above")
        return "\n".join([*self.lines, verdict])


FILES_PER_PROCESS = 200
"""Fewest files worth a decoding process: starting one takes about as long as decoding 200 VOC pairs."""


def decode_all(pairs: list[FilePair], workers: int, report: CheckReport) -> set[str]:
    """Decode every pair, in up to `workers` processes, and report the findings by kind; returns
    the paths found broken."""
    workers = max(1, min(workers, len(pairs) // FILES_PER_PROCESS))
    results = run_parallel(inspect_pair, pairs, workers, "data check: decoding", uses_torch=False)
    images = sum(p.image is not None for p in pairs)
    masks = sum(p.mask is not None for p in pairs)
    report.lines.append(f"decoded {images} images and {masks} masks" + (f" in {workers} processes" if workers > 1 else ""))
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for kind, path, detail in (f for found in results for f in found):
        by_kind.setdefault(kind, []).append((path, detail))
    for kind, files in by_kind.items():
        first = "; ".join(f"{path} ({detail})" for path, detail in files[:SHOWN])
        report.problem(f"{kind}: {len(files)} file{'s' if len(files) > 1 else ''} (first: {first})", label="BAD")
    return {path for files in by_kind.values() for path, _ in files}


def default_splits(data: DataConfig) -> list[str]:
    """The splits a check covers when none are named: the dataset's usual ones (VOC's, COCO's, a
    folder's `train` and its lists), else the config's."""
    entry = dataset_entry(data)
    if entry.default_splits is not None:
        return entry.default_splits(data)
    return list(dict.fromkeys([data.train_split, data.infer_split, data.eval_split, *data.val_splits]))


def check_dataset(data: DataConfig, splits: list[str] | None = None, workers: int | None = None) -> CheckReport:
    """What the dataset holds and lacks for `splits`, every file decoded in `workers` processes
    (default: one per CPU core)."""
    splits = splits or default_splits(data)
    workers = workers or cores_per_process()
    report = CheckReport([f"dataset {data.dataset} at {Path(data.root).expanduser()}"])
    pairs: dict[Path | None, FilePair] = {}
    if data.dataset == "voc12":
        _check_voc12(data, splits, report, pairs)
        decode_all(list(pairs.values()), workers, report)
        return report
    requires = dataset_entry(data).requires
    if requires is not None:
        _check_requirement(requires, report)
    built = [(split, dataset) for split in splits if (dataset := _build_split(data, split, report)) is not None]
    for _, dataset in built:
        pairs.update((p.image, p) for p in _dataset_pairs(dataset))
    broken = decode_all(list(pairs.values()), workers, report)
    for split, dataset in built:
        _check_split(data, split, dataset, broken, report)
    return report


def prepare_dataset(data: DataConfig, splits: list[str] | None = None, log: Callable[[str], None] = print) -> None:
    """Make every derived file now: COCO masks (via ensure_dataset), tag caches and indices per split."""
    ensure_dataset(data, log=log)
    for split in splits or default_splits(data):
        dataset = build_dataset(data, split)
        tags = dataset.tag_matrix()
        log(f"{split}: {len(dataset)} images, {int(tags.sum())} tags over {dataset.n_classes} classes")


# -- VOC 2012 + SBD: per folder and per list ---------------------------------------------------


def _stems(folder: Path, suffix: str) -> set[str] | None:
    return {p.stem for p in folder.glob(f"*{suffix}")} if folder.is_dir() else None


def _check_voc12(data: DataConfig, splits: list[str], report: CheckReport, pairs: dict[Path | None, FilePair]) -> None:
    try:
        root = resolve_voc_root(data.root)
    except DataError as exc:
        report.problem(str(exc))
        return
    report.lines.append(f"VOC2012 folder: {root}")
    folders = {name: _stems(root / name, suffix) for name, suffix in
               (("JPEGImages", ".jpg"), ("Annotations", ".xml"), *((m, ".png") for m in MASK_DIRS))}
    for name, stems in folders.items():
        report.lines.append(f"  {name + '/':24s} {len(stems):6d} files" if stems is not None else f"  {name + '/':24s} absent")
    if folders["JPEGImages"] is None:
        report.problem(f"{root / 'JPEGImages'}: image folder (from VOCtrainval_11-May-2012.tar)")
    for split in splits:
        _check_voc12_split(root, split, folders, report, pairs)


def _check_voc12_split(root: Path, split: str, folders: dict[str, set[str] | None], report: CheckReport,
                       pairs: dict[Path | None, FilePair]) -> None:
    path = next((p for p in list_candidates(root, split) if p.is_file()), None)
    if path is None:
        report.problem(f"split {split}: no list in ImageSets/Segmentation/, ImageSets/SegmentationAug/ or the "
                       f"packaged lists; {missing_list_hint(split)}")
        return
    try:
        ids = read_id_list(path)
    except DataError as exc:
        report.problem(f"split {split}: {exc}", label="BAD")
        return
    for image_id in ids:
        image = root / "JPEGImages" / f"{image_id}.jpg" if image_id in (folders["JPEGImages"] or ()) else None
        mask = next((root / name / f"{image_id}.png" for name in MASK_DIRS if image_id in (folders[name] or ())), None)
        if image is not None or mask is not None:
            pairs.setdefault(image or mask, FilePair(image, mask, len(VOC_CLASSES)))
    expected = LIST_COUNTS.get(split)
    count = f"{len(ids)} ids" + ("" if expected in (None, len(ids)) else f" (the official list has {expected})")
    report.lines.append(f"split {split}: {count} from {path}")
    _report_missing(report, f"split {split}: images", ids, folders["JPEGImages"], root / "JPEGImages", ".jpg",
                    required=True)
    masks = {name: _missing(ids, folders[name]) for name in MASK_DIRS}
    covering = next((name for name in MASK_DIRS if masks[name] == []), None)
    if covering:
        report.lines.append(f"  masks: all in {covering}/")
    else:
        shown = ", ".join(f"{name}/ lacks {len(miss)}" if miss is not None else f"{name}/ absent"
                          for name, miss in masks.items())
        report.lines.append(f"  masks: incomplete ({shown}); needed to score this split, not to train on it")
    xml_missing = _missing(ids, folders["Annotations"])
    if xml_missing == []:
        report.lines.append("  tags: from Annotations/*.xml")
    elif covering:
        report.lines.append(f"  tags: from {covering}/ (Annotations/ incomplete)")
    else:
        report.problem(f"split {split}: no image-level tags: Annotations/ lacks "
                       f"{len(xml_missing) if xml_missing is not None else 'all'} of its XML files and no mask "
                       f"folder covers it (or give data.tags_file)")


def _missing(ids: list[str], stems: set[str] | None) -> list[str] | None:
    return None if stems is None else [i for i in ids if i not in stems]


def _report_missing(report: CheckReport, what: str, ids: list[str], stems: set[str] | None, folder: Path,
                    suffix: str, required: bool) -> None:
    missing = _missing(ids, stems) if stems is not None else list(ids)
    if missing:
        first = ", ".join(f"{i}{suffix}" for i in missing[:SHOWN])
        text = f"{what}: {len(missing)} of {len(ids)} missing from {folder} (first: {first})"
        if required:
            report.problem(text)
        else:
            report.lines.append(f"  {text}")


# -- COCO, folders, synthetic: through the dataset readers ---------------------------------------


def _check_requirement(requires: Callable[[], str], report: CheckReport) -> None:
    """The optional package a dataset needs (COCO: pycocotools)."""
    try:
        report.lines.append(f"{requires()}: installed")
    except ContaError as exc:
        report.problem(str(exc))


def _build_split(data: DataConfig, split: str, report: CheckReport) -> VOCLayoutDataset | None:
    try:
        return build_dataset(data, split)
    except ContaError as exc:
        report.problem(f"split {split}: {exc}")
        return None


def _dataset_pairs(dataset: VOCLayoutDataset) -> list[FilePair]:
    """Every image of a split with its mask where one exists (COCO: where one is cached)."""
    return [FilePair(dataset.image_path(i), dataset.mask_path(i) if dataset.mask_path(i).is_file() else None,
                     dataset.n_classes) for i in dataset.ids]


def _check_split(data: DataConfig, split: str, dataset: VOCLayoutDataset, broken: set[str],
                 report: CheckReport) -> None:
    bad = [p for p in _dataset_pairs(dataset) if {str(p.image), str(p.mask)} & broken]
    if bad:
        report.lines.append(f"split {split}: {len(dataset)} images, {len(bad)} with a broken file (see BAD); "
                            "tags not read")
        return
    try:
        dataset.tag_matrix()
    except ContaError as exc:
        report.problem(f"split {split}: {exc}")
        return
    line = f"split {split}: {len(dataset)} images with tags over {dataset.n_classes} classes"
    dropped = getattr(dataset, "dropped", 0)
    if dropped:
        line += f" ({dropped} without a non-crowd object dropped)"
    report.lines.append(line)
    if dataset_entry(data).masks_on_demand:
        cached = len(_stems(dataset.mask_dir, ".png") or ())
        report.lines.append(f"  masks: {cached} of {len(dataset)} cached in {dataset.mask_dir} "
                            f"(the rest are made by `conta data prepare` or the first stage)")
    elif dataset.has_masks:
        report.lines.append(f"  masks: all in {dataset.mask_dir}")
    else:
        _report_missing(report, "masks (needed only for scores)", dataset.ids, _stems(dataset.mask_dir, ".png"),
                        dataset.mask_dir, ".png", required=False)
