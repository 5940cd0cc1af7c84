"""A tiny, randomly initialised Stable Video Diffusion pipeline for tests and demos.

It is built from diffusers' and transformers' own classes with SVD's structure, only narrower:
a VAE with four down blocks (so latents are 1/8 of the image, as with the real VAE), a CLIP image
encoder that takes 224-px input (the pipeline always resizes to 224) through a large patch, and
SVD's Euler scheduler. Saved with `save_pretrained`, it loads through
`StableVideoDiffusionPipeline.from_pretrained` exactly as real weights do, so the engine's loading,
planning, progress and decoding code runs for real in a second on a CPU. Its frames are noise.

`python -m generation.tiny OUT_DIR [--frames N]` saves one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    EulerDiscreteScheduler,
    StableVideoDiffusionPipeline,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

# The image-embedding width the UNet cross-attends to (1024 in the real model).
_EMBED_DIM = 32
# Each of fps, motion bucket and noise strength gets this many sinusoidal features (256 real).
_TIME_EMBED_DIM = 32


def svd_scheduler() -> EulerDiscreteScheduler:
    """SVD's published scheduler configuration (see shared/notes/svd-facts.md)."""
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_spacing="leading",
        timestep_type="continuous",
        steps_offset=1,
    )


def svd_feature_extractor() -> CLIPImageProcessor:
    """The CLIP preprocessor SVD ships; the pipeline only uses its normalisation."""
    return CLIPImageProcessor(
        crop_size={"height": 224, "width": 224},
        size={"shortest_edge": 224},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        do_rescale=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def build_tiny_pipeline(num_frames: int = 4, seed: int = 0) -> StableVideoDiffusionPipeline:
    """A random SVD pipeline a few megabytes in size; the same `seed` gives the same weights."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        # Two levels: latents need only be even, so 256x144 (latent 32x18) works.
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        layers_per_block=1,
        num_attention_heads=(2, 4),
        cross_attention_dim=_EMBED_DIM,
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=3 * _TIME_EMBED_DIM,
        in_channels=8,
        out_channels=4,
        num_frames=num_frames,
        sample_size=32,
    )
    vae = AutoencoderKLTemporalDecoder(
        # Four levels like SVD's VAE, so the pipeline's vae_scale_factor is 8; 32 channels is the
        # least GroupNorm(32) allows.
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        sample_size=256,
        force_upcast=True,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            # The pipeline always feeds 224x224; a 56-px patch keeps it to 16 tokens.
            image_size=224,
            patch_size=56,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=_EMBED_DIM,
            hidden_act="gelu",
        )
    )
    return assemble_pipeline(unet, vae, image_encoder)


def assemble_pipeline(unet: Any, vae: Any, image_encoder: Any) -> Any:
    """An SVD pipeline from its three networks, with SVD's scheduler and CLIP preprocessing; used
    for the tiny test model and for the full-size random build of the GPU benchmark."""
    # Typed loosely: diffusers' lazy imports hide the pipeline's inherited methods from mypy.
    pipe: Any = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=svd_scheduler(),
        feature_extractor=svd_feature_extractor(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(path: str | Path, num_frames: int = 4, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it as a model folder `from_pretrained` can load."""
    out = Path(path)
    pipe: Any = build_tiny_pipeline(num_frames=num_frames, seed=seed)
    pipe.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m generation.tiny",
        description="Save a tiny random SVD pipeline (for tests and demos; its frames are noise).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the model into")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    if not 2 <= args.frames <= 64:
        parser.error("--frames must be from 2 to 64")
    out = save_tiny_pipeline(args.out_dir, num_frames=args.frames, seed=args.seed)
    print(f"saved a tiny SVD pipeline ({args.frames} frames) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
