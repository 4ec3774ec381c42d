"""The accuracy/FLOPs trade-off (the paper's Table 2, Figures 4 and 7) from one evaluation pass:
both stages run on every image, then the exit threshold eta is swept offline, with
expected FLOPs = exited * FLOPs(stage 1) + (1 - exited) * FLOPs(stage 1 + 2).
"""
import numpy as np

DEFAULT_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.76, 0.8, 0.85, 0.9, 0.95,
                      0.99, 1.0)


def threshold_sweep(loc_probs, focus_probs, labels, mask, gflops, deit_gflops=None,
                    thresholds=DEFAULT_THRESHOLDS):
    """One row per eta from both stages' softmax (N, classes), labels and mask (False for
    padding): eta, top1, exit_fraction, gflops (average per image), reduction (vs deit_gflops) and
    the counts behind them (exited_correct, exited_wrong, focus_correct, focus_wrong)."""
    keep = np.asarray(mask, bool)
    loc, focus = np.asarray(loc_probs)[keep], np.asarray(focus_probs)[keep]
    labels = np.asarray(labels)[keep]
    if labels.size == 0:
        raise ValueError("No evaluation examples (every mask entry is False).")
    confidence = loc.max(axis=1)
    loc_right = loc.argmax(axis=1) == labels
    focus_right = focus.argmax(axis=1) == labels
    rows = []
    for eta in thresholds:
        exited = confidence >= np.float32(eta)
        frac = float(exited.mean())
        avg = frac * gflops["stage1_gflops"] + (1 - frac) * gflops["stage12_gflops"]
        correct = np.where(exited, loc_right, focus_right)
        rows.append({
            "eta": float(eta), "top1": float(correct.mean()), "exit_fraction": frac, "gflops": avg,
            "reduction": None if deit_gflops is None else 1 - avg / deit_gflops,
            "exited_correct": int((exited & loc_right).sum()),
            "exited_wrong": int((exited & ~loc_right).sum()),
            "focus_correct": int((~exited & focus_right).sum()),
            "focus_wrong": int((~exited & ~focus_right).sum())})
    return rows


def format_table(rows):
    """The sweep as a text table."""
    lines = [f"{'eta':>5} {'top-1':>7} {'exit@1':>7} {'GFLOPs':>8} {'vs DeiT':>8} "
             f"{'1:right':>8} {'1:wrong':>8} {'2:right':>8} {'2:wrong':>8}"]
    for r in rows:
        red = "" if r["reduction"] is None else f"{-100 * r['reduction']:+.1f}%"
        lines.append(f"{r['eta']:5.2f} {100 * r['top1']:6.2f}% {100 * r['exit_fraction']:6.1f}% "
                     f"{r['gflops']:8.3f} {red:>8} {r['exited_correct']:8d} {r['exited_wrong']:8d} "
                     f"{r['focus_correct']:8d} {r['focus_wrong']:8d}")
    return "\n".join(lines)


def match_baseline(rows, baseline_top1):
    """The cheapest row whose accuracy reaches `baseline_top1`, or None."""
    ok = [r for r in rows if r["top1"] >= baseline_top1]
    return min(ok, key=lambda r: r["gflops"]) if ok else None
