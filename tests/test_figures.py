"""Plot helpers: plain tick labels in the data's units, point labels that cover nothing."""

from __future__ import annotations

from sonodistill.figures import label_points, plain_log_ticks, pyplot, row_colours


def test_log_axis_ticks_are_plain_numbers_without_minor_labels():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(3.5, 60)
    plain_log_ticks(ax.xaxis, 3.5, 60)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels == ["5", "10", "20", "50"]
    assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]
    plt.close(fig)


def test_point_labels_stay_inside_and_never_overlap():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [(1.0, 1.0, "R50-Distill-US (lin)"), (1.05, 1.01, "R50-Rand (lin)"), (9.9, 9.9, "kd:vit_mobilenet")]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    label_points(ax, pts)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.texts]
    frame = ax.get_window_extent(r)
    assert len(boxes) == 3
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(3) for j in range(i + 1, 3))
    plt.close(fig)


def test_a_row_keeps_its_colour():
    a = row_colours(["R50-Rand", "R50-Distill-US", "kd:seg_unet"])
    assert a["kd:seg_unet"] == row_colours(["R50-Rand", "R50-Distill-US", "kd:seg_unet"])["kd:seg_unet"]
    assert len({a[k] for k in a}) == 3
