"""Evaluation against SLIC and Felzenszwalb at the same number of segments, as tables and curves."""

from __future__ import annotations

import os

import numpy as np

from keras_pixelembed import metrics
from keras_pixelembed.validation import require

METRICS = ("sbd", "f1@0.5", "ap@0.5:0.95", "ap@0.5", "ap@0.75", "pq", "asa", "ue", "br", "ari", "vi", "segments")


def object_sbd(pred, gt) -> float:
    """Symmetric best Dice over the labelled objects: `pred` is restricted to the gt objects'
    pixels first, so superpixels of the background (which gt does not label) do not count."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    return metrics.sbd(np.where(gt >= 1, pred, 0), gt)


def whole_ap(pred, gt) -> float:
    """The Data Science Bowl 2018 score of the whole prediction: TP / (TP + FP + FN) averaged
    over IoU 0.5, 0.55, ..., 0.95, every predicted segment counted (0 is background; pixels
    that gt ignores are left out), so segments where gt has no object are false positives."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    return metrics.average_precision(np.where(gt < 0, 0, pred), np.maximum(gt, 0))


# what `tune_thresholds` maximizes: "auto" is "ap" for spatial heads (background 0: a segment
# of the background is a false positive) and "object_sbd" for embedding heads (every pixel gets
# a segment, so only the labelled objects' pixels can be judged)
TUNE_METRICS = ("auto", "ap", "object_sbd")


def tuning_metric(name: str, head: str):
    """`(name, metric(pred, gt) -> float)` of a `TUNE_METRICS` choice for a head."""
    from keras_pixelembed.validation import check_choice

    check_choice("tune_metric", name, TUNE_METRICS)
    if name == "auto":
        name = "ap" if head == "spatial" else "object_sbd"
    return name, {"ap": whole_ap, "object_sbd": object_sbd}[name]


def score(pred, gt) -> dict:
    """Every metric of one segmentation against one gt label map (0 background, -1 ignored).

    `sbd`, `f1@0.5`, `ap@0.5:0.95` and `pq` compare the segments on the labelled objects'
    pixels only (the superpixel view: a segment of the background costs nothing). `ap@0.5`
    and `ap@0.75` are the instance-detection accuracy TP / (TP + FP + FN) at IoU 0.5 and 0.75
    (the Data Science Bowl 2018 score, the "AP" of StarDist and EmbedSeg) of the whole
    prediction: every predicted segment counts (0 is background; pixels that gt ignores are
    left out), so a method that labels every pixel pays for its segments of the background.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    on_objects = np.where(gt >= 1, pred, 0)
    m = metrics.matching(on_objects, np.maximum(gt, 0), 0.5)
    whole = np.where(gt < 0, 0, pred)
    return {
        "ap@0.5": metrics.average_precision(whole, np.maximum(gt, 0), thresholds=[0.5]),
        "ap@0.75": metrics.average_precision(whole, np.maximum(gt, 0), thresholds=[0.75]),
        "sbd": metrics.sbd(on_objects, np.maximum(gt, 0)),
        "f1@0.5": m.f1,
        "ap@0.5:0.95": metrics.average_precision(on_objects, np.maximum(gt, 0)),
        "pq": m.panoptic_quality,
        "asa": metrics.asa(pred, gt),
        "ue": metrics.undersegmentation_error(pred, gt),
        "br": metrics.boundary_recall(pred, gt),
        "ari": metrics.adjusted_rand_index(pred, gt, labeled_only=True),
        "vi": metrics.variation_of_information(pred, gt, labeled_only=True),
        "segments": float(len(np.unique(pred))),
    }


def slic_segments(
    image, n_segments: int, compactness: float = 10.0, match_count: bool = True, spacing=None
) -> np.ndarray:
    """scikit-image SLIC of an image `(h, w, c)` or a volume `(d, h, w, c)` (`spacing`: the
    voxel spacing per axis, e.g. `(z_spacing, 1, 1)`). With `match_count`, the `n_segments`
    request (up to 4x) whose actual count is closest to `n_segments` (SLIC returns far fewer
    than asked for small counts)."""
    slic = require("skimage.segmentation", "SLIC").slic

    n_segments = max(1, int(n_segments))
    requests = (
        [n_segments]
        if not match_count
        else sorted({n_segments, int(1.5 * n_segments), 2 * n_segments, 3 * n_segments, 4 * n_segments})
    )
    best, best_gap = None, None
    for n in requests:
        extra = {} if spacing is None else {"spacing": np.asarray(spacing, float)}
        seg = slic(image, n_segments=n, compactness=compactness, start_label=1, channel_axis=-1, **extra)
        seg = seg.astype(np.int32)
        gap = abs(len(np.unique(seg)) - n_segments)
        if best is None or gap < best_gap:
            best, best_gap = seg, gap
        if len(np.unique(seg)) >= n_segments:
            break
    return best


def felzenszwalb_segments(image, n_segments: int) -> np.ndarray:
    """Felzenszwalb's graph segmentation with the scale whose count is closest to `n_segments`."""
    felzenszwalb = require("skimage.segmentation", "Felzenszwalb's segmentation").felzenszwalb

    best, best_gap = None, None
    for scale in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000):
        seg = felzenszwalb(image, scale=scale, sigma=0.5, min_size=10) + 1
        gap = abs(len(np.unique(seg)) - n_segments)
        if best is None or gap < best_gap:
            best, best_gap = seg, gap
    return best.astype(np.int32)


def evaluate(segmenter, source, max_images: int | None = None, baselines=None, on_image=None) -> dict:
    """Runs the segmenter on every image of `source` (a `data` source; volumes: a volume
    source) and the baselines at the same number of segments; returns `{method: {metric:
    mean}}` plus `"images"`. `baselines` default to SLIC and Felzenszwalb for images, SLIC
    (with the segmenter's `z_spacing`) for volumes. `on_image(pred, gt)`, when given, sees
    each of the segmenter's label maps with its ground truth (for scores of one's own)."""
    n = len(source) if max_images is None else min(len(source), max_images)
    if n == 0:
        raise ValueError("The source has no images to evaluate")
    volume = getattr(segmenter, "ndim", 2) == 3
    if baselines is None:
        baselines = ("slic",) if volume else ("slic", "felzenszwalb")
    if volume and "felzenszwalb" in baselines:
        raise ValueError("Felzenszwalb's segmentation is for images: volumes take baselines=('slic',) or ()")
    spacing = (segmenter.z_spacing, 1.0, 1.0) if volume else None
    rows = {"ours": [], **{b: [] for b in baselines}}
    percentiles = getattr(segmenter, "percentiles", None)
    for i in range(n):
        image, gt = source.load_labels(i)
        ours = segmenter.segment(image)
        rows["ours"].append(score(ours, gt))
        if on_image is not None:
            on_image(ours, gt)
        k = max(2, len(np.unique(ours)))
        if percentiles is not None:  # the baselines see the image the model sees
            from keras_pixelembed.data.normalize import normalize_percentiles

            image = normalize_percentiles(image, percentiles)
        if "slic" in baselines:
            rows["slic"].append(score(slic_segments(image, k, spacing=spacing), gt))
        if "felzenszwalb" in baselines:
            rows["felzenszwalb"].append(score(felzenszwalb_segments(image, k), gt))
    result = {name: {key: float(np.mean([r[key] for r in values])) for key in METRICS} for name, values in rows.items()}
    result["images"] = n
    if volume:
        result["ndim"] = 3  # the "images" are volumes
    return result


def tuning_grid(head: str) -> list[dict]:
    """The clustering thresholds that `tune_thresholds` tries for a head."""
    if head == "spatial":
        return [
            {"seed_threshold": s, "fg_threshold": f, "min_size": m}
            for s in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
            for f in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
            if f <= s
            for m in (5, 15, 30, 60, 120, 240)
        ]
    return [{"radius": r, "min_size": m} for r in (0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5) for m in (5, 15, 30)]


def tune_thresholds(segmenter, outputs, labels, metric=None) -> tuple[dict, float]:
    """Grid search of the clustering thresholds on validation outputs; returns (best, score).

    Args:
        segmenter: a `Segmenter` (its head picks the grid, `tuning_grid`).
        outputs: raw model outputs, one `(h, w, channels)` per image (`segmenter.predict`).
        labels: ground-truth label maps `(h, w)` (0 background, -1 ignored).
        metric: `metric(pred, gt) -> float`, higher is better; defaults to the symmetric best
            Dice over the labelled objects (`object_sbd`). `tune_and_evaluate` picks it by
            head (`tuning_metric`).
    """
    metric = metric or object_sbd
    best, best_score = None, -np.inf
    for params in tuning_grid(segmenter.head):
        value = float(np.mean([metric(segmenter.cluster(o, **params), g) for o, g in zip(outputs, labels)]))
        if value > best_score:
            best, best_score = params, value
    return best, best_score


def tune_on(segmenter, val_source, metric: str = "auto") -> tuple[str, float]:
    """Tunes the segmenter's thresholds (in place) on `val_source` for `metric` (`TUNE_METRICS`);
    returns the metric's name and its value on `val_source` with those thresholds."""
    name, function = tuning_metric(metric, segmenter.head)
    images, labels = zip(*(val_source.load_labels(i) for i in range(len(val_source))))
    outputs = [segmenter.predict(image) for image in images]
    thresholds, val_score = tune_thresholds(segmenter, outputs, labels, metric=function)
    segmenter.thresholds = {**segmenter.thresholds, **thresholds}
    return name, val_score


def tune_and_evaluate(segmenter, val_source, test_source, max_images: int | None = None, metric: str = "auto") -> dict:
    """The step after training, shared by `train` and the bundling recipe: tunes the
    segmenter's thresholds on `val_source` (in place) for `metric` (`TUNE_METRICS`,
    `tuning_metric`) and evaluates it on `test_source`.

    Returns `evaluate`'s table plus `"thresholds"`, `"tuned_on"` (the metric's name) and
    `"validation_score"` (its value on `val_source` with those thresholds).
    """
    name, val_score = tune_on(segmenter, val_source, metric)
    result = evaluate(segmenter, test_source, max_images=max_images)
    result["thresholds"] = dict(segmenter.thresholds)
    result["tuned_on"] = name
    result["validation_score"] = val_score
    return result


def leave_one_out_tables(scores: dict, models: dict | None = None, this: str | None = None) -> str:
    """The Markdown tables of a leave-one-family-out evaluation (`benchmarks/bench_families.py`).

    `scores` maps a model to `{test set: {method: {metric: mean}}}`; a model named `"none"` is
    the run that saw every family, a model named after a test set is the run that never saw
    that one. The first table is every model's object SBD on every test set (and SLIC's), the
    second puts each left-out run beside the `"none"` run on the set it never saw. SLIC is
    asked for the first model's number of segments. Where the scores hold `"by_size"`
    (`{size: (object SBD, images)}`), a third table gives each model's object SBD by object size.
    `this`
    (a path in `models`) is called "this model"."""
    sets = list(next(iter(scores.values())))

    def label(model):
        if this and models and os.path.realpath(models[model]) == os.path.realpath(this):
            return "this model"
        return "all families" if model == "none" else (f"without {model}" if model in sets else model)

    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for model, table in scores.items():
        lines.append(f"| {label(model)} | " + " | ".join(f"{table[n]['ours']['sbd']:.3f}" for n in sets) + " |")
    first = next(iter(scores.values()))
    count = f"SLIC (the count of {label(next(iter(scores)))})"
    lines.append(f"| {count} | " + " | ".join(f"{first[n]['slic']['sbd']:.3f}" for n in sets) + " |")
    folds = [m for m in scores if m in sets]
    if "none" in scores and folds:
        lines += ["", "| left out | in family | left out | gap |", "|---|---|---|---|"]
        for name in folds:
            inside, outside = scores["none"][name]["ours"]["sbd"], scores[name][name]["ours"]["sbd"]
            lines.append(f"| {name} | {inside:.3f} | {outside:.3f} | {outside - inside:+.3f} |")
    sizes = [list(t["by_size"]) for t in first.values() if "by_size" in t][:1]
    if sizes:  # object SBD by object size, pooled over the test sets (weighted by their images)
        lines += ["", "| model (by object size) | " + " | ".join(sizes[0]) + " |", "|---|" + "---|" * len(sizes[0])]
        for model, table in scores.items():
            cells = []
            for size in sizes[0]:
                pairs = [t["by_size"][size] for t in table.values() if t.get("by_size", {}).get(size, [None])[0]]
                total = sum(n for _, n in pairs)
                cells.append(f"{sum(v * n for v, n in pairs) / total:.3f}" if total else "-")
            lines.append(f"| {label(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """A plain Markdown table of `evaluate`'s result (methods as rows)."""
    names = [k for k, v in result.items() if isinstance(v, dict) and "sbd" in v]
    lines = ["| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name in names:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{result[name][k]:.3f}" if k != "segments" else f"{result[name][k]:.1f}" for k in METRICS)
            + " |"
        )
    unit = "volumes" if result.get("ndim") == 3 else "images"
    note = f"mean over {result['images']} {unit}; sbd / f1 / ap / pq on the labelled objects"
    if result.get("evaluated_on") == "test":
        note += f"; held-out test {unit}"
    elif result.get("evaluated_on") == "validation":
        note += (
            f"; VALIDATION {unit}, which also tuned the thresholds and chose the checkpoint: optimistic. "
            "Give a held-out set (--test-images) for honest figures"
        )
    return "\n".join(lines) + f"\n\n({note})"


def print_table(result: dict) -> None:
    """Prints `format_table` (plain Markdown: readable in any terminal width, pastes into notes)."""
    print(format_table(result))


def write_json(result: dict, path: str) -> None:
    """Writes `evaluate`'s result as JSON (through a temporary file)."""
    from keras_pixelembed.run_dir import write_json as write

    write(path, result)


def superpixel_curves(embeddings_list, images, gts, counts=(25, 50, 100, 200, 400), compactness: float = 10.0) -> dict:
    """ASA, UE and boundary recall against the number of segments, `embedding_slic` on the
    learned embeddings vs SLIC on the images (means over images)."""
    from keras_pixelembed.cluster import embedding_slic

    curves = {
        "counts": list(counts),
        "embedding_slic": {"asa": [], "ue": [], "br": [], "segments": []},
        "slic": {"asa": [], "ue": [], "br": [], "segments": []},
    }
    for k in counts:
        for name in ("embedding_slic", "slic"):
            vals = {"asa": [], "ue": [], "br": [], "segments": []}
            for emb, image, gt in zip(embeddings_list, images, gts):
                seg = (
                    embedding_slic(emb, k, compactness)
                    if name == "embedding_slic"
                    else slic_segments(image, k, compactness)
                )
                vals["asa"].append(metrics.asa(seg, gt))
                vals["ue"].append(metrics.undersegmentation_error(seg, gt))
                vals["br"].append(metrics.boundary_recall(seg, gt))
                vals["segments"].append(len(np.unique(seg)))
            for key in vals:
                curves[name][key].append(float(np.mean(vals[key])))
    return curves
