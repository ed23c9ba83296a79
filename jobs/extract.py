"""Extract RGB and optical-flow clip features of a manifest's videos into a feature store.

    python jobs/extract.py --manifest data/manifest.parquet --out features/ \
        --extractor i3d --weights rgb_imagenet.pt --flow-weights flow_imagenet.pt
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/extract.py --manifest ... --out ...
    python jobs/extract.py --verify --out features/

Reruns on the same --out extract only what is missing. See README.md for every option.
"""

import argparse
import sys

from reslstm.distributed.extract import ExtractConfig, ExtractError, run_extraction, verify


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", help="manifest Parquet (video_id, path, label, label_name, split)")
    p.add_argument("--out", required=True, help="feature store directory (created; reruns resume)")
    p.add_argument("--streams", default="rgb,flow", help="comma list of rgb, flow (default: both)")
    p.add_argument("--extractor", default="i3d", help="3D CNN: i3d, c3d, r3d_18, r2plus1d_18, s3d, tiny3d, ...")
    p.add_argument("--weights", help="RGB weights: file, torchvision name (KINETICS400_V1) or 'none'")
    p.add_argument("--flow-weights", help="flow weights, likewise")
    p.add_argument("--flow", default="tvl1", choices=["tvl1", "farneback", "dis", "raft"],
                   help="optical flow method (default tvl1, what pretrained flow models expect)")
    p.add_argument("--allow-cpu-raft", action="store_true", help="let --flow raft run without a GPU")
    p.add_argument("--raft-size", default="large", choices=["small", "large"], help="RAFT model (large)")
    p.add_argument("--raft-weights", default="C_T_V2",
                   help="RAFT weights: a torchvision Raft_*_Weights name (default C_T_V2, from "
                        "torchvision's cache), a file, or 'none' (random init, tests only)")
    p.add_argument("--clip-len", type=int, help="frames per clip (default: the model's, 16)")
    p.add_argument("--clip-stride", type=int, default=8, help="a clip starts every N frames (8)")
    p.add_argument("--crops", type=int, default=10, choices=[1, 10], help="10-crop (eq. 5) or centre crop")
    p.add_argument("--size", type=int, help="short side frames are decoded at (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per forward pass")
    p.add_argument("--actors", type=int, help="max feature actors (default: one per GPU, or CPUs/2)")
    p.add_argument("--actor-cpus", type=float,
                   help="CPUs each feature actor reserves (default: 1 with GPUs, 0 on a CPU-only "
                        "cluster, where flow is the slow stage; raise it when the model is)")
    p.add_argument("--clips-per-segment", type=int, default=32,
                   help="clips decoded and extracted together; bounds memory for long videos")
    p.add_argument("--min-frame-ratio", type=float, default=0.9,
                   help="fail a video that decodes fewer than this fraction of its declared "
                        "frames; between this and 1 the row gets a warning (default 0.9)")
    p.add_argument("--retry-failed", action="store_true", help="retry videos that failed before")
    p.add_argument("--overwrite", action="store_true", help="discard the streams' rows if settings differ")
    p.add_argument("--object-store-limit-gb", type=float,
                   help="cap on the segments held in the object store (default: 8 segments per "
                        "worker, at most half the object store)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--verify", action="store_true", help="check the store at --out and exit")
    a = p.parse_args(argv)
    try:
        if a.verify:
            return 0 if verify(a.out, a.manifest) else 1
        if not a.manifest:
            p.error("--manifest is required (except with --verify)")
        cfg = ExtractConfig(
            manifest=a.manifest, out=a.out, streams=tuple(s.strip() for s in a.streams.split(",") if s.strip()),
            extractor=a.extractor, weights=a.weights, flow_weights=a.flow_weights, flow=a.flow,
            clip_len=a.clip_len, clip_stride=a.clip_stride, crops=a.crops, size=a.size,
            batch_size=a.batch_size, actors=a.actors, actor_cpus=a.actor_cpus,
            clips_per_segment=a.clips_per_segment,
            min_frame_ratio=a.min_frame_ratio, retry_failed=a.retry_failed, overwrite=a.overwrite,
            allow_cpu_raft=a.allow_cpu_raft, raft_size=a.raft_size, raft_weights=a.raft_weights,
            object_store_limit_gb=a.object_store_limit_gb,
            address=a.address)
        run_extraction(cfg)
        return 0
    except ExtractError as exc:
        print(f"extract: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
