#!/usr/bin/env bash
# The study at the paper's scale, for one CUDA GPU (never needed by the project: every other script
# runs on a CPU). Same harness and controls as scripts/study.sh, at the paper's sizes:
#   - FCN at full width (64, 3.9M parameters) on all 50,000 CIFAR-10 images, 32 px;
#   - AlexNet (57M parameters) at 128 px on all 50,000 images, as the authors ran it;
#   - ResNet-18 (width 64) on all 50,000 images;
#   - the paper's AG News LSTM (4 x 512, 8.3M parameters) on the 6,000 texts we have.
# Run time, an estimate (never measured: no GPU has run it yet). Model FLOPs per epoch from
# FlopCounterMode: FCN-64 2.0e13, AlexNet at 128 px 7.3e13, ResNet-18 1.7e14; at an achieved
# 25 TFLOP/s that is 1, 3 and 7 s of compute, and batches are indexed on the CPU, so count about
# 4, 10 and 12 minutes per 60-epoch run with evaluation, and about 1 minute per LSTM run. With 6
# methods x 3 seeds: FCN ~1.2 h, AlexNet ~3 h, ResNet-18 ~3.6 h, LSTM ~0.3 h: about 8 GPU-hours.
# SHORT=1 runs only FCN at full width, baseline vs PDT, 1 seed: about 8 minutes.
#   bash scripts/study-gpu.sh            # everything, results under results/gpu
#   SHORT=1 bash scripts/study-gpu.sh    # the 8-minute piece
source "$(dirname "$0")/env.sh"
out="${OUT:-results/gpu}"
gpu=(--device cuda --jobs 1 --quiet --threads 4)
methods=baseline,pdt,random-mask,pdt-linear,ema,schedule-free
full=(--train-subset 50000)

if [ -n "${SHORT:-}" ]; then
  pdt-bench compare --task cifar10-fcn --width 64 "${full[@]}" --methods baseline,pdt --seeds 0 "${gpu[@]}" \
    --out "$out/cifar10-fcn-full-short"
  exit
fi
pdt-bench compare --task cifar10-fcn --width 64 "${full[@]}" --methods "$methods" --seeds 0,1,2 "${gpu[@]}" \
  --out "$out/cifar10-fcn-full"
pdt-bench compare --task agnews-lstm-paper --methods "$methods" --seeds 0,1,2 "${gpu[@]}" --out "$out/agnews-lstm-paper"
pdt-bench compare --task cifar10-resnet18 --width 64 "${full[@]}" --methods "$methods" --seeds 0,1,2 "${gpu[@]}" \
  --out "$out/cifar10-resnet18-full"
pdt-bench compare --task cifar10-alexnet --width 64 --img-size 128 "${full[@]}" --methods "$methods" --seeds 0,1,2 \
  "${gpu[@]}" --out "$out/cifar10-alexnet-128"
