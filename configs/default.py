"""Every default, with a one-line comment each. Experiment configs import this and override a few
fields; on the command line, override any field with `--config.section.field=value`."""
import ml_collections

from isodiff_jax.analysis import options


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0  # root of every random key and of the data order

    c.data = d = ml_collections.ConfigDict()
    d.name = "shapes"  # "shapes" or "digits" (built in), "folder" (images under data_dir) or a TFDS name, e.g. "cifar10"
    d.data_dir = ""  # TFDS data_dir or the image folder; unused by "shapes" and "digits"
    d.split = "train"  # TFDS split
    d.resolution = 32  # images are resized and center-cropped to resolution × resolution
    d.random_flip = False  # random horizontal flips, decided by (seed, step, row)
    d.prefetch = 3  # batches loaded ahead (by each worker, with workers)
    d.workers = 0  # loading processes (grain); 0: one background thread. Use 2-8 for JPEG folders / TFDS at 256²
    d.latent_cache = ""  # latent diffusion: a directory the data set's latents are encoded into once ("": each batch)

    c.model = m = ml_collections.ConfigDict()
    m.block_out_channels = (32, 64, 64)  # channels per U-Net level (one downsampling between levels)
    m.attention_levels = (False, False, False)  # self-attention after each resnet of a level (AttnDownBlock2D)
    m.layers_per_block = 1  # resnets per down level (one more per up level)
    m.mid_attention = True  # attention in the middle block (whose output is h); diffusers' add_attention
    m.attention_head_dim = 16  # channels per attention head; None: one head per attention block
    m.norm_num_groups = 8  # GroupNorm groups
    m.norm_eps = 1e-5  # GroupNorm epsilon (google's DDPM models: 1e-6)
    m.flip_sin_to_cos = True  # time features ordered (cos, sin); False: (sin, cos), as google's DDPM models
    m.freq_shift = 0.0  # time-feature frequencies exp(−ln(1e4)·i / (dim/2 − freq_shift)); google's DDPM: 1
    m.downsample_padding = 1  # stride-2 convolutions pad all sides (1) or bottom/right only (0: google's DDPM)
    m.act_fn = "silu"  # the resnets' activation: "silu", "swish", "mish", "gelu" or "relu"
    m.resnet_time_scale_shift = "default"  # time embedding added ("default") or as GroupNorm scale/shift ("scale_shift")
    m.center_input_sample = False  # the U-Net first maps its input x to 2x − 1
    m.mid_block_scale_factor = 1.0  # the middle block's residual sums are divided by this
    m.dtype = "float32"  # computation dtype: "float32" or "bfloat16" (parameters stay float32)
    m.remat = "none"  # jax.checkpoint policy of each resnet/attention block: "none", "blocks", "dots_saveable", ...

    # latent diffusion: the U-Net diffuses the latents of a frozen VQ autoencoder (diffusers' VQModel);
    # `python -m isodiff_jax.pretrained` fills this section from an imported model (docs/pretrained.md)
    c.autoencoder = a = ml_collections.ConfigDict()
    a.kind = "none"  # "none" (diffusion on the images) or "vq" (on the autoencoder's latents)
    a.params_file = ""  # its weights, a .npz written by the import
    a.block_out_channels = (128, 256, 512)  # channels per level (one 2× down/upsampling between levels)
    a.layers_per_block = 2  # resnets per encoder level (one more per decoder level)
    a.latent_channels = 3  # channels at the encoder's output and the decoder's input
    a.vq_embed_dim = 3  # channels of the latent the U-Net diffuses (and of the codebook entries)
    a.num_vq_embeddings = 8192  # codebook entries
    a.norm_num_groups = 32  # GroupNorm groups (epsilon 1e-6, as diffusers)
    a.act_fn = "silu"  # the resnets' activation
    a.mid_attention = True  # attention in the middle blocks
    a.scaling_factor = 1.0  # latent = scaling_factor · encoder output (CompVis' VQ LDMs: 1)

    c.diffusion = df = ml_collections.ConfigDict()
    df.schedule = "linear"  # beta schedule: "linear", "cosine" or "scaled_linear" (sqrt(β) linear, as LDM)
    df.num_timesteps = 1000  # T
    df.beta_start = 1e-4  # linear and scaled_linear schedules' first beta
    df.beta_end = 0.02  # linear and scaled_linear schedules' last beta
    df.logsnr_shift = 0.0  # added to every log-SNR (> 0: less noise at each t; 2 ln 2 takes a 32 px schedule to 16 px)
    df.loss_weighting = "uniform"  # of the ε-loss over t: "uniform" (DDPM) or "min_snr" (Min-SNR-γ)
    df.t_sampling = "uniform"  # each batch's timesteps: "uniform" (independent) or "stratified" (one per stratum)
    df.min_snr_gamma = 5.0  # γ of "min_snr": weight min(SNR_t, γ) / SNR_t

    c.regularizer = r = ml_collections.ConfigDict()
    r.kind = "sphere"  # "none", "sphere" (the paper), "euclidean" or "path_length"
    r.weight = 1e-3  # λ_iso
    r.p = 0.5  # gating ratio: steps with t < pT are plain, t >= pT regularized (method.md §4)
    r.form = "tangent"  # "tangent" (default) or "chart" (stereographic coordinates)
    r.estimator = "jvp_vjp"  # trace estimator: "jvp_vjp" or "jvp_jvp"
    r.num_probes = 1  # Hutchinson probes per sample
    r.radius = "point"  # sphere through x_t ("point") or x_t rescaled onto radius sqrt(n) ("sqrt_n")
    r.pl_decay = 0.99  # path_length only: decay of the running mean of |Jᵀy|

    c.optim = o = ml_collections.ConfigDict()
    o.lr = 1e-3  # peak learning rate
    o.warmup_steps = 200  # linear warm-up from 0 to lr
    o.decay = "cosine"  # after warm-up: "cosine" (to end_lr_fraction·lr at num_steps) or "constant"
    o.end_lr_fraction = 0.1  # cosine decay's final learning rate, as a fraction of lr
    o.b1 = 0.9  # AdamW β1
    o.b2 = 0.999  # AdamW β2
    o.weight_decay = 0.0  # AdamW decoupled weight decay
    o.clip_norm = 1.0  # gradient clipping by global norm
    o.grad_accum_steps = 1  # micro-batches per step (the global batch is split into this many)
    o.ema_max_decay = 0.9999  # EMA decay min(max, 1 − (1 + step)^(−ema_power))
    o.ema_power = 0.75  # the EMA averages over about the last (1 + step)^ema_power steps

    c.training = t = ml_collections.ConfigDict()
    t.num_steps = 1200  # optimizer steps
    t.global_batch_size = 32  # examples per step over all devices and processes
    t.init_from = ""  # fine-tuning: a workdir (or one of its checkpoint step dirs) to take parameters from

    c.checkpoint = ck = ml_collections.ConfigDict()
    ck.every_steps = 200  # save every N steps (and always at the end)
    ck.keep = 3  # keep the newest K checkpoints

    c.logging = lg = ml_collections.ConfigDict()
    lg.log_every_steps = 20  # TensorBoard scalars (averaged over the interval)
    lg.sample_every_steps = 600  # EMA sample grid (and at the end); 0 = only at the end
    lg.num_samples = 36  # samples in the grid (fixed seeds)
    lg.sample_steps = 200  # DDIM steps for the grid
    lg.sample_eta = 1.0  # DDIM η of the grid: 1 (stochastic, fixed seed) is much cleaner than 0 for short runs
    lg.progress_bar = True  # tqdm progress bar on process 0
    lg.profile_steps = ()  # (START, STOP): a jax.profiler trace of those steps in workdir/profile/ (process 0)

    # analysis evaluators on the EMA parameters; every field of isodiff_jax.analysis.options.Options
    # (num_pairs, timesteps, num_samples, ...) is here with its default, except seed (= c.seed)
    c.evaluation = ev = ml_collections.ConfigDict(
        {f.name: f.default for f in options.fields() if f.name != "seed"})
    ev.every_steps = 0  # every E steps and at the end; 0 = never
    ev.metrics = ""  # comma-separated names of isodiff_jax.analysis.registry.REGISTRY, e.g. "mrtl,fd"
    ev.oracle_dir = ""  # shapes factor oracle (fd_oracle, factor_rtl, edit, linearity, pullback)
    ev.classifier_dir = ""  # digit classifier (digits: fd_classifier, pullback)
    ev.inception_file = ""  # Inception-v3 FID weights, .npz (docs/fid.md)
    ev.lpips_file = ""  # LPIPS weights for PPL, .npz (docs/lpips.md)
    return c
