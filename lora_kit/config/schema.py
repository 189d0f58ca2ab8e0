"""The recipe schema: typed dataclasses, one per TOML section.

These dataclasses *are* the schema (litgpt-style): the loader validates a TOML file against them, the CLI
overrides `section.key=value` against them, and docs/recipes.md documents every field. Names follow
kohya-ss/sd-scripts where a kohya user would look for them (repeats, keep_tokens, bucket_reso_steps,
caption_dropout, min_snr_gamma, noise_offset, prior_loss_weight...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# Repeats of one image per epoch (a kohya N_name folder, [dataset] repeats / reg_repeats): the epoch is a list of
# images x repeats samples, so a typo such as 99999999999_x would fill memory instead of training.
MAX_REPEATS = 10_000

Precision = Literal["no", "fp16", "bf16"]
SavePrecision = Literal["fp32", "fp16", "bf16"]


@dataclass
class ModelConfig:
    pretrained: str = "builtin:tiny-sd15"  # builtin:NAME, a diffusers folder, a .safetensors file or a Hub id
    revision: str = ""
    variant: str = ""
    single_file_config: str = ""  # for a single-file checkpoint: a diffusers folder/hub id of its architecture
    vae: str = ""  # optional VAE override (folder or hub id), e.g. an fp16-fixed SDXL VAE
    clip_skip: int = 1  # 1 = last layer; 2 = penultimate (SD1 anime models)
    zero_terminal_snr: bool = False  # rescale betas to zero terminal SNR (use with v-prediction)


@dataclass
class DatasetConfig:
    path: str = ""  # kohya folder (N_name subfolders), imagefolder with metadata.jsonl/csv, or save_to_disk folder
    kind: Literal["auto", "folder", "imagefolder", "hf_disk"] = "auto"
    image_column: str = "image"
    caption_column: str = "text"
    caption_extension: str = ".txt"  # sidecar extension; ".caption" also read when this is missing
    repeats: int = 1  # for images not in an N_name folder
    class_tokens: str = ""  # fallback caption when an image has none (folder name of N_name overrides)
    trigger_word: str = ""  # prefixed to the concept's captions (reg images keep theirs); kept first when tags are shuffled
    shuffle_tags: bool = False  # kohya shuffle_caption
    keep_tokens: int = 0  # leading tags never shuffled or dropped
    tag_separator: str = ","
    tag_dropout: float = 0.0  # kohya caption_tag_dropout_rate
    caption_dropout: float = 0.0  # whole caption replaced by "" (trains the unconditional branch for CFG)
    flip_aug: bool = False
    reg_path: str = ""  # regularisation (class) images for prior preservation
    reg_repeats: int = 1
    reg_class_tokens: str = ""  # caption of reg images without sidecar, e.g. "a star"
    reg_balance: bool = False  # kohya: raise reg repeats round-robin (or drop the surplus) to match the training samples
    reg_prompt: str = ""  # class images rendered by the base model from this prompt (diffusers DreamBooth --class_prompt)
    reg_count: int = 0  # how many (--num_class_images); rendered once, cached by model hash and prompt
    # Pictures per concept caption, rendered by the base from the caption with the trigger word taken out:
    # DreamBooth's class prompt, per caption, so every word the concept's captions use is also seen without
    # the trigger (else a style leaks into prompts sharing those words). 0 = off; with reg_path, both are the reg set.
    reg_from_captions: int = 0
    validation_split: float = 0.0  # fraction held out for validation loss (seeded)
    max_images: int = 0  # 0 = all


@dataclass
class BucketConfig:
    enabled: bool = True
    resolution: int = 512  # target area is resolution^2 (SDXL: 1024)
    bucket_reso_steps: int = 64  # bucket sides are multiples of this
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_no_upscale: bool = False  # never enlarge a small image; its bucket shrinks instead
    random_crop: bool = False  # else centre crop


@dataclass
class CacheConfig:
    latents: bool = True  # VAE latents cached on disk (safetensors), keyed by content hash + bucket + crop + flip + VAE
    text: Literal["auto", "on", "off"] = "auto"  # auto: cache only when captions are static
    dir: str = ""  # default: <lora-kit cache>/cache
    # Images per VAE encode while caching (kohya vae_batch_size). 0 = auto: 2 megapixels per encode
    # (8 images at 512 px, 2 at 1024): SDXL's fp32 VAE holds ~1.5 GB of activations per 1024-px image.
    vae_batch_size: int = 0


@dataclass
class NetworkConfig:
    rank: int = 16  # kohya network_dim
    alpha: float = 16.0  # kohya network_alpha; the update is scaled by alpha/rank
    dropout: float = 0.0
    target: str = "attn"  # attn | attn-ff | custom
    target_modules: list[str] = field(default_factory=list)  # used when target = "custom"
    conv_rank: int = 0  # kohya conv_dim: > 0 also adapts the 3x3 convolutions of the ResNet blocks (LoCon)
    conv_alpha: float = 0.0  # kohya conv_alpha; 0 = conv_rank (scale 1)
    init: Literal["gaussian", "default", "pissa", "olora", "loftq", "zeros"] = "gaussian"
    use_dora: bool = False
    # LyCORIS algorithm (kohya network_args algo=...): lora, loha (Hadamard product of two low-rank
    # pairs) or lokr (Kronecker product); conv_rank/conv_alpha give the convolutions' dims for each.
    algo: Literal["lora", "loha", "lokr"] = "lora"
    factor: int = -1  # LoKr: Kronecker factor of each dimension (kohya/LyCORIS factor; -1 = near the square root)
    # kohya network_args: one value per U-Net block (SD1: 25 = IN00-11, MID, OUT00-11; SDXL: 23 = BASE,
    # IN00-08, MID0-2, OUT00-08, OUT; lora_kit.adapters.blocks); empty = rank/alpha (conv_rank/conv_alpha) everywhere
    block_dims: list[int] = field(default_factory=list)
    block_alphas: list[float] = field(default_factory=list)
    conv_block_dims: list[int] = field(default_factory=list)  # the ResNet 3x3 convolutions' ranks per block
    conv_block_alphas: list[float] = field(default_factory=list)
    train_text_encoder: bool = False
    text_encoder_rank: int = 0  # 0 = same as rank
    text_encoder_alpha: float = 0.0  # 0 = same as alpha
    # "attn": q/k/v/out projections (the diffusers examples); "attn-mlp": also each layer's MLP (fc1, fc2), as
    # kohya's networks.lora trains CLIPAttention and CLIPMLP; "values": only the value and output projections
    # (v_proj, out_proj), so every word attends where the base model's did (docs/recipes.md)
    text_encoder_target: Literal["attn", "attn-mlp", "values"] = "attn"
    # Pivotal tuning (the diffusers advanced script's --train_text_encoder_ti): the trigger word's own token
    # embedding is trained too, at text_encoder_lr, and written beside the LoRA as a textual-inversion file
    # (<name>.emb.safetensors) that prompts must load with it. Needs train_text_encoder and a trigger word.
    train_trigger_embedding: bool = False


@dataclass
class OptimizerConfig:
    name: Literal["adamw8bit", "adamw", "lion8bit", "prodigy"] = "adamw8bit"
    lr: float = 1e-4  # kohya unet_lr
    text_encoder_lr: float = 5e-5
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    args: dict = field(default_factory=dict)  # extra keyword arguments for the optimizer class
    # kohya's block lr weights (lr x weight per U-Net block; 0 = the block gets no LoRA): a list (SD1 12/1/12,
    # SDXL 9/3/9 values) or, for down/up, a kohya preset "sine", "cosine", "linear", "reverse_linear", "zeros" (+base)
    down_lr_weight: list[float] | str = field(default_factory=list)
    mid_lr_weight: list[float] = field(default_factory=list)
    up_lr_weight: list[float] | str = field(default_factory=list)
    # LoRA+ (kohya loraplus_*_lr_ratio): lora_up (peft lora_B) trains at lr x ratio; 0 = off
    loraplus_lr_ratio: float = 0.0
    loraplus_unet_lr_ratio: float = 0.0  # overrides loraplus_lr_ratio for the U-Net
    loraplus_text_encoder_lr_ratio: float = 0.0  # overrides loraplus_lr_ratio for the text encoders


@dataclass
class SchedulerConfig:
    name: Literal[
        "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "piecewise_constant"
    ] = "constant"
    warmup_steps: int = 0
    num_cycles: int = 1
    power: float = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 0  # 0 = derived from epochs
    epochs: int = 1
    mixed_precision: Precision = "no"
    # true / false, or "auto": off when the batch's measured activations fit the GPU (lora_kit.train.memory)
    gradient_checkpointing: bool | Literal["auto"] = False
    max_grad_norm: float = 1.0  # 0 = no clipping
    num_workers: int = 0
    attention: Literal["sdpa", "default"] = "sdpa"
    # torch.compile of the U-Net (lora_kit.train.compile): "regional" = each repeated transformer/ResNet block
    compile: Literal["off", "regional", "full"] = "off"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": no code generation, for checks)


@dataclass
class LossConfig:
    min_snr_gamma: float = 0.0  # 0 = off; 5 is the paper's value
    noise_offset: float = 0.0
    min_timestep: int = 0
    max_timestep: int = 1000
    prior_loss_weight: float = 1.0
    # What a prior (reg) sample is trained towards: "image" = the noise its picture was noised with (kohya,
    # DreamBooth); "base" = what the base model (adapters off) predicts for the same noisy latent, timestep
    # and caption (ai-toolkit's differential output preservation, on the prior set): the adapter is taught
    # to leave prompts without the trigger as the base draws them. Costs one no-grad forward of the prior rows.
    prior_target: Literal["image", "base"] = "image"
    type: Literal["l2", "huber", "smooth_l1"] = "l2"  # kohya loss_type
    huber_schedule: Literal["constant", "exponential", "snr"] = "snr"  # kohya's default
    huber_c: float = 0.1
    huber_scale: float = 1.0
    masked: bool = False  # weight the loss by the alpha channel / <stem>.mask.png (kohya alpha_mask)


@dataclass
class EmaConfig:
    # An exponential moving average of the adapter weights (OneTrainer/SimpleTuner EMA); when on, the exported
    # files hold the average, the optimizer keeps training the live weights; both are in checkpoints.
    enabled: bool = False
    decay: float = 0.999  # the most it reaches: diffusers EMAModel's warm-up (1 + n) / (10 + n) over the n updates
    every_n_steps: int = 1  # update interval in optimizer steps (OneTrainer ema_update_step_interval)
    device: Literal["same", "cpu"] = "same"  # "cpu" keeps the average in host memory (each update copies there)


@dataclass
class ValidationConfig:
    every_n_steps: int = 0  # 0 = off
    timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])
    seed: int = 1234


@dataclass
class SaveConfig:
    every_n_steps: int = 0  # training-state checkpoints (exact resume); 0 = none (the end writes the adapter files)
    # also a training-state checkpoint at the last step (kohya save_state_on_train_end): `--resume latest` with a
    # larger max_steps then continues a finished run from where it ended
    state_at_end: bool = False
    keep_last: int = 3
    export_every_n_steps: int = 0  # intermediate adapter files
    precision: SavePrecision = "fp16"
    title: str = ""
    author: str = ""
    description: str = ""
    license: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class SampleConfig:
    every_n_steps: int = 0  # 0 = off (a final grid is still rendered when prompts are given)
    prompts: list[str] = field(default_factory=list)
    negative_prompt: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    weights: list[float] = field(default_factory=lambda: [0.0, 1.0])
    steps: int = 0  # 0 = the model's default (lora_kit.infer.defaults: 20)
    cfg: float = 0.0  # 0 = the model's default (7; builtin:tiny-world 5)
    sampler: str = ""  # "" = the model's default (DPM++ 2M)
    width: int = 0  # 0 = bucket resolution
    height: int = 0
    control_image: str = ""  # optional ControlNet conditioning image
    controlnet: str = ""  # ControlNet folder or hub id used with control_image


@dataclass
class LogConfig:
    tensorboard: bool = True
    # Loss, grad norm and images/s are read from the device only every n steps (a read makes the host wait
    # for the device), averaged over the steps in between.
    every_n_steps: int = 10


@dataclass
class Recipe:
    name: str = "lora"  # output name: <output_dir>/<name>.safetensors
    output_dir: str = "runs/{name}"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    save: SaveConfig = field(default_factory=SaveConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Optional[str] = None  # the file it came from (set by the loader, not read from TOML)
