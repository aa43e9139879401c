"""Edge benchmark of the KD recipes: CPU batch-size-1 latency / FPS / size of every teacher and
student side by side, and the deployed student (ONNX, onnxruntime fp32, dynamic INT8, static
QDQ INT8) against PyTorch eager, with the accuracy change on a test split.

    python bench/edge.py                       # quick student trained on synthetic BUSI
    python bench/edge.py --run OUT_OF_A_vit_mobilenet_RUN   # the trained student and its test split
    python bench/edge.py --int8-study          # what makes static INT8 fast on onnxruntime's CPU provider

All the machinery (timing, export, quantisation, sessions) is downstream.edge, the module the
sweep's edge column uses.

All latencies are measured in interleaved rounds in one process (see
downstream.edge.measure.side_by_side), at 224 px unless --size. The last line is JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

import torch

from downstream.edge.measure import fp32_mib, models_side_by_side, num_params, side_by_side
from sonodistill.arg_checks import at_least
from sonodistill.errors import UserError


def full_models(names: list[str], size: int = 224) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """Full-size recipe models built for ``size`` px inputs (random init: latency does not depend on the weights)."""
    from downstream.kd.config import TimmStudentConfig
    from downstream.kd.models.backbones import timm_student
    from downstream.kd.recipes import csa_moe, hdkd, nanoray, vit_mobilenet

    builders = {
        "vit_mobilenet.teacher": (
            lambda: vit_mobilenet.build_teacher(vit_mobilenet.HybridTeacherConfig(), 3, size),
            (1, 3),
        ),
        "vit_mobilenet.student": (lambda: timm_student(TimmStudentConfig(), 3), (1, 3)),
        "nanoray.teacher": (lambda: nanoray.build_teacher(nanoray.ViTTeacherConfig(), 2, size), (1, 3)),
        "hdkd.teacher": (lambda: hdkd.build_teacher(hdkd.HDKDModelConfig(), 7), (1, 3)),
        "hdkd.student": (lambda: hdkd.build_student(hdkd.HDKDModelConfig(), 7, size, True), (1, 3)),
        "csa_moe.csa_moe": (lambda: csa_moe.build("csa_moe", csa_moe.CSAMoEModelConfig()), (1, 3, 3)),
        "csa_moe.resnet18": (lambda: csa_moe.build("resnet18", csa_moe.CSAMoEModelConfig()), (1, 1, 3)),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise UserError(f"unknown model(s) {unknown}; valid: {list(builders)}")
    return {n: (builders[n][0]().eval(), builders[n][1]) for n in names}


def quick_student(workdir: Path, size: int, epochs: int, n: int):
    """Train MobileNetV3-Small (3 classes) briefly on synthetic BUSI; return model, test set, train set."""
    from downstream.data import ImageSet
    from downstream.data.inputs import Inputs
    from downstream.fit import FitConfig, fit
    from downstream.kd.config import RecipeConfig, TimmStudentConfig
    from downstream.kd.data import prepare
    from downstream.kd.models.backbones import timm_student
    from downstream.kd.pipeline import seed_everything
    from downstream.loaders import make_loader
    from downstream.splits import SplitConfig
    from downstream.tasks import Classification
    from shards.synth import write_busi
    from sonodistill.world import make_accelerator

    data = workdir / "busi"
    write_busi(data, n, seed=0)
    cfg = RecipeConfig(image_size=size, split=SplitConfig(ratios=[0.56, 0.10, 0.34], seed=42))
    prep = prepare(str(data), cfg, workdir)
    seed_everything(0)
    model = timm_student(TimmStudentConfig(), len(prep.classes))
    train = ImageSet(prep.parts["train"], size, labels=True)
    cfg = FitConfig(lr=1e-3, weight_decay=0.01, schedule="none", epochs=epochs, batch_size=16, select="last")
    fit(
        Classification(model, Inputs(), prep.classes),
        make_loader(train, 16, train=True),
        None,
        cfg,
        make_accelerator("no"),
        name="student",
    )
    return model.cpu().eval(), ImageSet(prep.parts["test"], size, labels=True), train


@functools.cache  # read once: checked before the timing, deployed after it
def run_student(run_dir: Path):
    """The distilled student of a vit_mobilenet run (its own or a sweep's KD cell), with that run's
    data, splits and test split."""
    from downstream.data import ImageSet
    from downstream.kd.checkpoint import load_model, read_arch
    from downstream.kd.data import prepare
    from downstream.kd.models.backbones import timm_student
    from downstream.kd.papers.vit_mobilenet import VitMobilenetPaperConfig
    from sonodistill.config import load_config

    weights = run_dir / "distilled" / "model.safetensors"
    arch = read_arch(weights) if weights.is_file() else None
    if arch is None:
        raise UserError(f"--run {run_dir}: no distilled student (expected a finished vit_mobilenet run)")
    try:  # the run's resolved config: another recipe's does not fit
        cfg = load_config(VitMobilenetPaperConfig, run_dir / "config.yaml")
    except UserError as exc:
        raise UserError(f"--run {run_dir}: not a vit_mobilenet run ({exc})") from None
    named = cfg.split.file  # a sweep's KD cell names the sweep's split; a kd train run keeps its own
    # a relative name is the sweep's working directory's: one of the cell's folders above
    found = [p for p in (Path(named), *(a / named for a in run_dir.resolve().parents)) if named and p.is_file()]
    cfg.split.file = str(found[0]) if found else str(run_dir / "splits.json")
    if not Path(cfg.split.file).is_file():  # never a new split: the test images must be the run's
        raise UserError(f"--run {run_dir}: its split ({named or cfg.split.file}) is gone; the test set is unknown")
    prep = prepare(json.loads((run_dir / "metrics.json").read_text())["data"], cfg, run_dir)
    model = timm_student(cfg.student, len(prep.classes))
    load_model(model, weights, arch=arch, key="--run")
    size = cfg.image_size
    return (
        model.eval(),
        ImageSet(prep.parts["test"], size, labels=True),
        ImageSet(prep.parts["train"], size, labels=True),
    )


def batches(ds, inputs, limit: int | None = None):
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        it = ds[i]
        yield inputs(it["image"][None], train=False), int(it["label"])


STUDY_MODELS = {
    # name: (builder, what it is)
    "r50_encoder": (lambda: _timm("resnet50", 0), "the distilled ResNet-50 encoder (pooled features)"),
    "r50_unet": (lambda: _unet("resnet50"), "its U-Net (smp, the downstream segmenter)"),
    "mnv3_small": (lambda: _timm("mobilenetv3_small_100", 3), "MobileNetV3-Small student (vit_mobilenet, nanoray)"),
    "effl0_unet": (lambda: _unet("tu-efficientnet_lite0"), "EfficientNet-Lite0 U-Net student (seg_unet)"),
}


def _timm(name: str, classes: int) -> torch.nn.Module:
    import timm

    return timm.create_model(name, num_classes=classes)


def _unet(encoder: str) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder, encoder_weights=None, classes=1)


def quantize_unfolded(fp32: Path, out: Path, data: list) -> Path:
    """Static QDQ INT8 of the raw export, BatchNorm not folded (no pre-processing pass before quantising)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": x} for x in data)

        def get_next(self):
            return next(self.it, None)

    from downstream.edge.onnx import quantizer_logs

    with quantizer_logs():  # onnxruntime's per-node notes through our logger, not as bare WARNING:root lines
        ort_quantize_static(
            str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True,
        )  # fmt: skip
    return out


def print_study(lat: dict, graphs: dict) -> None:
    """One model's study table: each INT8 variant's latency, speed-up over onnxruntime fp32, fp32 ops left."""
    base = lat["ort_fp32"]["median_ms"]
    print(f"{'variant':22s} {'ms':>9s} {'vs fp32':>8s} {'fp32 ops left':>14s} {'depthwise':>9s}")
    for k, v in lat.items():
        if k == "ort_fp32":
            continue
        g = graphs.get(k.split("@")[0], {})
        left = sum(g.get("fp32_ops", {}).values())
        print(
            f"{k:22s} {v['median_ms']:9.2f} {base / v['median_ms']:7.2f}x {left:14d} "
            f"{g.get('depthwise_int8_convs', 0):9d}"
        )


def int8_study(models: list[str], size: int, threads: int, runs: int, warmup: int, calib: int, out: Path) -> dict:
    """onnxruntime fp32 against static INT8 variants of each model, timed side by side.

    Variants: the default (QDQ, per-channel U8S8, MinMax, BatchNorm folded by the pre-processing
    pass), QOperator format, per-tensor weights, reduce_range (7-bit weights), convolutions /
    matmuls only, and no graph optimisation before quantising (BatchNorm left unfolded); plus the
    default INT8 model under onnxruntime's basic / extended graph optimisation levels."""
    import numpy as np

    from downstream.edge.onnx import OrtModel, QuantConfig, export, int8_graph, quantize_static

    variants = {
        "default": QuantConfig(),
        "qoperator": QuantConfig(format="qoperator"),
        "per_tensor": QuantConfig(per_channel=False),
        "reduce_range": QuantConfig(reduce_range=True),
        "conv_matmul_only": QuantConfig(op_types=["Conv", "MatMul", "Gemm"]),
    }
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(max(calib, 1))]
    report: dict = {}
    for name in models:
        torch.manual_seed(0)
        model = STUDY_MODELS[name][0]().eval()
        work = out / name
        fp32 = export(model, work / "fp32.onnx", size)
        sessions = {"ort_fp32": OrtModel(fp32, threads)}
        graphs = {}
        for v, qc in variants.items():
            path = quantize_static(fp32, work / f"int8_{v}.onnx", data[:calib], qc)
            sessions[v] = OrtModel(path, threads)
            graphs[v] = int8_graph(path)
        raw = quantize_unfolded(fp32, work / "int8_no_bn_folding.onnx", data[:calib])
        sessions["no_bn_folding"] = OrtModel(raw, threads)
        graphs["no_bn_folding"] = int8_graph(raw)
        for level in ("basic", "extended"):
            sessions[f"default@{level}"] = OrtModel(work / "int8_default.onnx", threads, level=level)
        x = data[0]
        lat = side_by_side({k: (lambda s=s, x=x: s(x)) for k, s in sessions.items()}, runs, warmup)
        base = lat["ort_fp32"]["median_ms"]
        report[name] = {
            "what": STUDY_MODELS[name][1],
            "ms": {k: round(v["median_ms"], 3) for k, v in lat.items()},
            "speedup_vs_ort_fp32": {k: round(base / v["median_ms"], 3) for k, v in lat.items() if k != "ort_fp32"},
            "int8_graph": graphs,
        }
        print(f"\n{name}: {STUDY_MODELS[name][1]} ({size} px, {threads} threads); onnxruntime fp32 {base:.2f} ms")
        print_study(lat, graphs)
    return report


def parse_args() -> argparse.Namespace:
    """The command line (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0 = torch's default)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument(
        "--models",
        default="vit_mobilenet.teacher,vit_mobilenet.student,nanoray.teacher,hdkd.teacher,"
        "hdkd.student,csa_moe.csa_moe,csa_moe.resnet18",
    )
    p.add_argument("--run", default="", help="a vit_mobilenet run folder: use its distilled student and test split")
    p.add_argument("--train-epochs", type=int, default=15, help="quick student: epochs on synthetic BUSI")
    p.add_argument("--train-n", type=int, default=150, help="quick student: synthetic BUSI images")
    p.add_argument("--calib", type=int, default=16, help="static INT8: calibration images (training split)")
    p.add_argument("--out", default="", help="keep the ONNX files here (default: a temporary folder)")
    p.add_argument("--int8-study", action="store_true", help="compare static INT8 settings against onnxruntime fp32")
    p.add_argument("--study-models", default=",".join(STUDY_MODELS), help=f"of {', '.join(STUDY_MODELS)}")
    args = p.parse_args()
    at_least(args, {"runs": 1, "warmup": 0, "threads": 0, "size": 32, "train_epochs": 1, "train_n": 12, "calib": 1})
    if args.out and Path(args.out).is_dir() and any(Path(args.out).iterdir()):  # found before minutes of timing
        raise UserError(f"--out {args.out}: not empty; give a new folder for the ONNX files")
    return args


def study_main(args: argparse.Namespace, threads: int) -> None:
    """``--int8-study``: run the study on the chosen models and print its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        names = [n for n in args.study_models.split(",") if n]
        unknown = [n for n in names if n not in STUDY_MODELS]
        if unknown:
            raise UserError(f"unknown model(s) {unknown}; valid: {list(STUDY_MODELS)}")
        report = int8_study(names, args.size, threads, args.runs, args.warmup, args.calib, work)
    summary = {
        "bench": "edge_int8_study",
        "size": args.size,
        "threads": threads,
        "runs": args.runs,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "int8_default_vs_ort_fp32": {k: v["speedup_vs_ort_fp32"]["default"] for k, v in report.items()},
        "target_1_3x_r50": all(
            report[k]["speedup_vs_ort_fp32"]["default"] >= 1.3 for k in ("r50_encoder", "r50_unet") if k in report
        )
        if {"r50_encoder", "r50_unet"} & set(report)
        else None,
        "models": report,
    }
    print(json.dumps(summary))


def recipe_table(args: argparse.Namespace, threads: int) -> dict[str, dict]:
    """Every recipe model in PyTorch eager fp32, timed side by side; print and return the table."""
    names = [n for n in args.models.split(",") if n]
    models = full_models(names, args.size)
    examples = {n: torch.randn(*shape, args.size, args.size) for n, (_, shape) in models.items()}
    timed = models_side_by_side({n: m for n, (m, _) in models.items()}, examples, args.runs, args.warmup)
    table = {n: {"params_m": num_params(m) / 1e6, "mb": fp32_mib(m), **timed[n]} for n, (m, _) in models.items()}
    print(f"{'model':26s} {'params':>9s} {'MB':>8s} {'ms':>9s} {'FPS':>8s}   (CPU, batch 1, {threads} threads)")
    for n, r in table.items():
        print(f"{n:26s} {r['params_m']:8.2f}M {r['mb']:8.1f} {r['median_ms']:9.2f} {r['fps']:8.1f}")
    return table


def load_student(args: argparse.Namespace, work: Path):
    """The student to deploy (``--run``'s, or a quick one): model, test set, train set, where it came from."""
    if args.run:
        student, test, train = run_student(Path(args.run))
        source = f"run {args.run}"
    else:
        student, test, train = quick_student(work, args.size, args.train_epochs, args.train_n)
        source = f"quick MobileNetV3-Small, {args.train_epochs} epochs on {args.train_n} synthetic BUSI images"
    return student.cpu().float().eval(), test, train, source


def ort_runtimes(student: torch.nn.Module, train, inputs, size: int, calib: int, threads: int, work: Path) -> dict:
    """The student exported to ONNX as onnxruntime sessions: fp32, dynamic INT8, static QDQ INT8."""
    from downstream.edge.onnx import OrtModel, export, quantize_dynamic_int8, quantize_static_qdq

    fp32 = export(student, work / "student_fp32.onnx", size)
    dyn = quantize_dynamic_int8(fp32, work / "student_int8_dynamic.onnx")
    images = (x.numpy() for x, _ in batches(train, inputs, calib))
    qdq = quantize_static_qdq(fp32, work / "student_int8_qdq.onnx", images)
    return {
        "ort_fp32": OrtModel(fp32, threads),
        "ort_int8_dynamic": OrtModel(dyn, threads),
        "ort_int8_qdq": OrtModel(qdq, threads),
    }


def score(student: torch.nn.Module, ort: dict, test, inputs) -> tuple[dict, dict, int]:
    """Test accuracy of eager and every runtime, and each runtime's agreement with eager; and the test count."""
    correct = {k: 0 for k in ["torch_eager", *ort]}
    agree = {k: 0 for k in ort}  # same prediction as PyTorch fp32: finer than accuracy on a small test set
    n = 0
    with torch.inference_mode():
        for x, y in batches(test, inputs):
            ref = int(student(x).argmax(1).item())
            correct["torch_eager"] += int(ref == y)
            for k, sess in ort.items():
                pred = int(sess(x.numpy()).argmax(1)[0])
                correct[k] += int(pred == y)
                agree[k] += int(pred == ref)
            n += 1
    return {k: v / max(n, 1) for k, v in correct.items()}, {k: v / max(n, 1) for k, v in agree.items()}, n


def deploy_student(args: argparse.Namespace, threads: int) -> dict:
    """The deployed student: accuracy, agreement, latency and size per runtime (eager, onnxruntime)."""
    from downstream.data.inputs import Inputs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        student, test, train, source = load_student(args, work)
        size = test.size
        inputs = Inputs()
        ort = ort_runtimes(student, train, inputs, size, args.calib, threads, work)
        acc, agreement, n = score(student, ort, test, inputs)
        x = torch.randn(1, 3, size, size)
        xn = x.numpy()
        fns = {"torch_eager": lambda: student(x), **{k: (lambda s=s: s(xn)) for k, s in ort.items()}}
        lat = side_by_side(fns, args.runs, args.warmup)
        sizes = {"torch_eager": fp32_mib(student), **{k: s.mb for k, s in ort.items()}}
    return dict(source=source, n=n, size=size, acc=acc, agreement=agreement, lat=lat, sizes=sizes)


def print_deployment(d: dict) -> None:
    """The deployment table: one row per runtime."""
    acc, lat = d["acc"], d["lat"]
    print(f"\nstudent deployment ({d['source']}; test images: {d['n']}; {d['size']} px)")
    print(
        f"{'runtime':18s} {'MB':>7s} {'ms':>8s} {'FPS':>8s} {'vs eager':>9s} "
        f"{'accuracy':>9s} {'change':>8s} {'agree':>7s}"
    )
    eager = lat["torch_eager"]["median_ms"]
    for k in d["sizes"]:
        print(
            f"{k:18s} {d['sizes'][k]:7.2f} {lat[k]['median_ms']:8.2f} {lat[k]['fps']:8.1f} "
            f"{eager / lat[k]['median_ms']:8.2f}x "
            f"{100 * acc[k]:8.2f}% {100 * (acc[k] - acc['torch_eager']):+7.2f} {100 * d['agreement'].get(k, 1.0):6.1f}%"
        )


def edge_summary(args: argparse.Namespace, threads: int, table: dict, d: dict) -> dict:
    """The JSON line of the default run: teacher/student ratios, runtime speed-ups, accuracy changes."""
    acc, lat = d["acc"], d["lat"]
    eager = lat["torch_eager"]["median_ms"]
    t, s = table.get("vit_mobilenet.teacher"), table.get("vit_mobilenet.student")
    return {
        "threads": threads,
        "size": args.size,
        "student_size": d["size"],
        "runs": args.runs,
        "student_source": d["source"],
        "vit_mobilenet_fps_ratio": (s["fps"] / t["fps"]) if t and s else None,
        "vit_mobilenet_size_ratio": (t["mb"] / s["mb"]) if t and s else None,
        "ort_int8_dynamic_vs_eager": eager / lat["ort_int8_dynamic"]["median_ms"],
        "ort_int8_qdq_vs_eager": eager / lat["ort_int8_qdq"]["median_ms"],
        "ort_fp32_vs_eager": eager / lat["ort_fp32"]["median_ms"],
        "accuracy": acc,
        "agreement_with_fp32": d["agreement"],
        "accuracy_change_int8_dynamic": acc["ort_int8_dynamic"] - acc["torch_eager"],
        "accuracy_change_int8_qdq": acc["ort_int8_qdq"] - acc["torch_eager"],
        "test_images": d["n"],
        "latency_ms": {
            **{k: r["median_ms"] for k, r in table.items()},
            **{f"student.{k}": r["median_ms"] for k, r in lat.items()},
        },
        "fps": {k: r["fps"] for k, r in table.items()},
        "mb": {k: r["mb"] for k, r in table.items()},
    }


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.int8_study:
        study_main(args, threads)
        return
    if args.run:
        run_student(Path(args.run))  # a run that cannot be deployed is said before minutes of timing
    table = recipe_table(args, threads)  # 1. every recipe model, PyTorch eager fp32, side by side
    deployed = deploy_student(args, threads)  # 2. the deployed student: accuracy and latency per runtime
    print_deployment(deployed)
    print(json.dumps(edge_summary(args, threads, table, deployed)))


if __name__ == "__main__":
    from sonodistill.errors import cli_main

    cli_main(main)()  # logging set up (library notices off stdout); bad input: one line, exit 2
