"""Shared defaults for every config; a config changes only what differs. Field names follow score_sde_pytorch."""
import ml_collections
from ml_collections.config_dict import placeholder


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42                    # seeds data order, parameter init, noise, snapshots
    config.device = "auto"              # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    config.precision = "float32"        # float32 | bfloat16 | float16: autocast of the network in training and sampling
                                        # (float16 adds a gradient scaler, CUDA only); the likelihood ODE stays
                                        # float32/64
    config.compile = False              # torch.compile the network for training
    config.allow_tf32 = False           # TF32 matmuls/convolutions on Ampere+ GPUs (faster, not bit-reproducible)
    config.num_threads = 0              # CPU threads of torch; 0: one for networks under 2M parameters (their small
                                        # kernels gain little from threads and lose badly on a shared machine), else
                                        # torch's default

    config.distributed = distributed = ml_collections.ConfigDict()  # used when launched by torchrun
    distributed.backend = "auto"        # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    distributed.timeout_minutes = 30    # how long a rank waits for the others at a collective before failing

    config.sde = sde = ml_collections.ConfigDict()
    sde.name = "vpsde"                  # vpsde | subvpsde | vesde | cosine | rectified | polynomial_flow
    sde.beta_min = 0.1                  # VP / sub-VP: beta(0)
    sde.beta_max = 20.0                 # VP / sub-VP: beta(1)
    sde.sigma_min = 0.01                # VE: sigma(0)
    sde.sigma_max = 50.0                # VE: sigma(1), about the largest distance between data points
    sde.s = 0.008                       # cosine: offset s of Nichol & Dhariwal's schedule
    sde.power = 2.0                     # polynomial_flow: alpha_bar = 1 - t^power, beta_bar = t

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "digits"             # digits | moons | swissroll | circles | checkerboard | gmm8 | mnist | cifar10
                                        # | image_folder | array
    data.image_size = placeholder(int)  # pixels (height = width); None: the dataset's own (digits 8, mnist 28, ...)
    data.num_channels = placeholder(int)  # 1 (grey) or 3 (RGB); None: the dataset's own
    data.centered = True                # True: data scaled to [-1, 1]; False: [0, 1]
    data.random_flip = False            # random horizontal flips of training images
    data.path = ""                      # root folder (mnist, cifar10, image_folder) or .npy/.npz file (array)
    data.download = False               # let torchvision download mnist/cifar10 into data.path
    data.num_samples = 20000            # size of the generated training set of the 2-D toys
    data.test_fraction = 0.1            # share of image_folder / array items held out as the test set

    config.model = model = ml_collections.ConfigDict()
    model.name = "unet"                 # unet | mlp (vector data always uses mlp)
    model.parameterization = "eps"      # eps | score | x0 | v | flow (velocity u = alpha_bar' x0 + beta_bar' eps) | edm
    model.sigma_data = 0.5              # data standard deviation of the edm parameterisation and the edm weighting
    model.consistency_sigma_min = placeholder(float)  # None, or a consistency model's sigma(eps), where its output
    #                                     is its input (set by --mode distill with distill.method=consistency)
    model.ema_rate = 0.995              # EMA decay per step (with warm-up (1+n)/(10+n)); CIFAR-10: 0.9999
    model.nf = 16                       # base channels of the UNet
    model.ch_mult = (1, 2)              # channel multiplier per resolution
    model.num_res_blocks = 1            # residual blocks per resolution
    model.attn_resolutions = ()         # resolutions (pixels) with self-attention
    model.dropout = 0.0                 # dropout probability in residual blocks
    model.resblock_updown = True        # BigGAN-style residual up/down-sampling
    model.skip_rescale = True           # rescale skip connections by 1/sqrt(2)
    model.embedding_type = placeholder(str)  # None: the model's own (ncsnpp: fourier, else sinusoidal) |
    #                                          sinusoidal (of t, VP-type) | fourier (of log sigma, VE-type)
    model.fourier_scale = 16.0          # std of the Gaussian Fourier features
    model.conditional = False           # feed class labels to the network (datasets with labels only)
    model.mlp_width = 256               # MLP hidden width (vector data)
    model.mlp_depth = 3                 # MLP hidden layers (vector data)

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128           # examples per step
    training.n_iters = 2000             # total optimisation steps
    training.snapshot_freq = 500        # steps between checkpoint + sample snapshot
    training.log_freq = 50              # steps between log lines / metrics.jsonl rows
    training.eval_freq = 500            # steps between test-loss evaluations
    training.fid_freq = 0               # steps between sample-quality evaluations (0: off) of
    #                                     metrics.num_samples_training samples: FD-digits2, energy distance for vectors,
    #                                     FID with the `metrics` extra
    training.keep_checkpoints = 3       # newest checkpoints kept in <workdir>/checkpoints
    training.weighting = "eps"          # eps (lambda = beta_bar^2) | likelihood (g^2) | likelihood_is | edm |
    #                                     flow (||u_hat - u||^2, conditional flow matching: lambda = g^4/4)
    training.t_sampling = "stratified"  # uniform | stratified | antithetic draws of t across the batch |
    #                                     logit_normal (t = sigmoid(logit_mean + logit_std z), Esser et al. 2024)
    training.logit_mean = 0.0           # logit_normal: mean of logit(t) (SD3: 0)
    training.logit_std = 1.0            # logit_normal: standard deviation of logit(t) (SD3: 1)
    training.coupling = "independent"   # independent | ot: pair each batch's data and noise by the exact minibatch
    #                                     optimal-transport assignment (per rank under torchrun)
    training.eps = 1e-5                 # smallest t in the loss
    training.snapshot_samples = 64      # samples drawn for each snapshot (0: none)
    training.progress = True            # tqdm progress bar
    training.p_uncond = 0.1             # conditional models: probability of training on the null label
                                        # (classifier-free guidance)

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"            # Adam | AdamW
    optim.lr = 1e-3                     # peak learning rate (short CPU runs; Song et al.: 2e-4)
    optim.beta1 = 0.9                   # Adam beta1
    optim.eps = 1e-8                    # Adam epsilon
    optim.weight_decay = 0.0            # (decoupled for AdamW)
    optim.warmup = 200                  # linear learning-rate warm-up steps (Song et al.: 5000)
    optim.grad_clip = 1.0               # max gradient norm (<= 0: no clipping)

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.solver = "dpm_solver"      # any name of solvers.available()
    sampling.steps = 20                 # solver steps (NFE depends on the solver)
    sampling.options = ""               # any other solver options, "name=value,...", e.g. "order=2,variant=bh1"
    #                                     (solvers.solver_options(name) lists them)
    sampling.eps = 1e-3                 # smallest t the sampler reaches
    sampling.shift = 1.0                # fixed-step solvers: offset the log-SNR of the grid's inner times by
    #                                     -log(shift) (SD3's sigma' = shift sigma/(1 + (shift - 1) sigma)); 1: none
    sampling.grid = ""                  # "" (the solver's default), uniform | logsnr | edm, "calibrated"
    #                                     (<workdir>/grids/<solver>_<steps>.json from --mode calibrate) or a .json path
    sampling.calibration_pilot = 64     # calibrate: pilot prior samples the grid is fitted on
    sampling.calibration_iterations = 300   # calibrate: Adam steps on the grid (each one solver run + backward)
    sampling.snr = 0.16                 # pc: Langevin signal-to-noise ratio
    sampling.corrector_steps = 1        # pc: Langevin steps per predictor step
    sampling.num_samples = 64           # samples written by --mode sample
    sampling.batch_size = 64            # samples per solver call
    sampling.class_label = ""           # conditional sampling: a label "3" or a list "0,1,2" cycled over each batch
    sampling.guidance = 0.0             # classifier-free guidance weight omega (0: the plain conditional score)
    sampling.classifier_scale = 0.0     # classifier guidance scale gamma (0: off; needs --mode train_classifier)

    config.classifier = classifier = ml_collections.ConfigDict()
    classifier.nf = 32                  # base channels of the image classifier (encoder half of a U-Net)
    classifier.ch_mult = (1, 2)         # channel multiplier per resolution of the image classifier
    classifier.width = 128              # hidden width of the vector-data classifier
    classifier.depth = 3                # hidden layers of the vector-data classifier
    classifier.lr = 3e-4                # Adam learning rate
    classifier.batch_size = 128         # examples per step
    classifier.n_iters = 2000           # total optimisation steps
    classifier.log_freq = 100           # steps between log lines
    classifier.snapshot_freq = 500      # steps between checkpoints in <workdir>/classifier

    config.inpainting = inpainting = ml_collections.ConfigDict()
    inpainting.method = "repaint"       # replacement | repaint
    inpainting.steps = 100              # reverse Euler-Maruyama steps
    inpainting.resample = 10            # repaint: steps per grid interval (re-noise and repeat); NFE = steps * resample

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.batch_size = 256           # test points per likelihood / test-loss batch
    evaluate.num_samples = 0            # test points for bits/dim (0: the whole test split)
    evaluate.divergence = "rademacher"  # exact | rademacher | gaussian
    evaluate.n_probes = 1               # Hutchinson probes per point
    evaluate.method = "eab4"            # likelihood ODE: eab4 (fixed grid, 1 NFE per step) | rk45 | any adaptive
    evaluate.steps = 0                  # eab4 steps (0: the fewest meeting `accuracy` on the pilot batch)
    evaluate.rtol = 1e-5                # adaptive methods: relative tolerance when accuracy is 0 (score_sde: 1e-5)
    evaluate.atol = 1e-5                # adaptive methods: absolute tolerance when accuracy is 0
    evaluate.accuracy = 1e-3            # bits/dim: ODE error target of the setting chosen on the pilot (0: use
    #                                     steps / rtol, atol as given); --rtol/--atol on the command line fix rk45
    evaluate.pilot = 16                 # test points solved at 3 settings to estimate the ODE error (0: none)
    evaluate.bound_samples = 64         # --bound elbo: stratified log-SNR samples (network calls) per test point
    evaluate.bound_eps = 1e-3           # --bound elbo: the decoder's time; the Quickstart run's bound was 4.40 / 3.51 /
    #                                     2.75 / 2.49 bits/dim at 1e-5 / 1e-4 / 1e-3 / 1e-2 (17 levels: wide bins)
    evaluate.eps = 1e-5                 # smallest t of the likelihood ODE
    evaluate.dequant_repeats = 1        # fresh uniform dequantisations of the test set (score_sde: 5)

    config.distill = distill = ml_collections.ConfigDict()   # --mode distill
    distill.method = "progressive"      # progressive (Salimans & Ho 2022, Algorithm 2) | reflow (Liu et al. 2022) |
    #                                     consistency (Song et al. 2023, Algorithm 2)
    distill.iterations = 500            # student updates (per round of progressive distillation)
    distill.lr = 5e-4                   # student learning rate (Adam); on the digits 5e-4 beat 2e-4 and 1e-3
    #                                     (FD-digits2 of the first round's student)
    distill.warmup = 50                 # linear learning-rate warm-up steps at the start of each student's training
    distill.ema_rate = 0.99             # EMA decay of the student (with the warm-up of model.ema_rate)
    # progressive: each round halves the student's DDIM steps
    distill.start_steps = 64            # DDIM steps of the teacher (the run's EMA network) in the first round
    distill.target_steps = 4            # DDIM steps of the last student; start_steps/target_steps must be a power of 2
    distill.teacher_solver = "ddim"     # the two teacher steps one student step learns: DDIM (eta = 0), as the paper
    distill.grid = "uniform"            # time grid of the teacher's start_steps (uniform | logsnr | edm); each
    #                                     student takes every other time of its teacher's grid
    distill.parameterization = "v"      # student output: v | x0 (eps-prediction is ill-conditioned at few steps)
    distill.weighting = "truncated_snr"  # truncated_snr: max(SNR, 1) |x - x_hat|^2 | snr_plus_one: (SNR + 1) |...|^2
    # reflow (Liu et al. 2022): rectified-flow students trained on (noise, sample) pairs of the teacher's ODE
    distill.reflow = reflow = ml_collections.ConfigDict()
    reflow.k = 2                        # the k-rectified flow: 2 reflows the teacher, 3 reflows the 2-rectified flow..
    reflow.pairs = 10000                # pairs drawn from each flow (a multiple of shard_size)
    reflow.shard_size = 1000            # pairs per file of <student>/pairs/ and per solver call; a rerun redraws only
    #                                     the shards that are missing
    reflow.solver = "rk45"              # the teacher's probability-flow ODE solver (any deterministic one)
    reflow.steps = 0                    # its steps (0: the solver's default; rk45 is adaptive and takes none)
    reflow.options = "rtol=1e-5,atol=1e-5"  # its other options, "name=value,..."
    reflow.one_step = False             # also distil the k-rectified flow into one Euler step (<k>-onestep)
    reflow.one_step_iterations = 500    # updates of the one-step student
    # consistency: one student f(x_t, t), the endpoint at eps of the teacher's ODE path through x_t
    distill.consistency = consistency = ml_collections.ConfigDict()
    consistency.N = 18                  # noise levels, EDM rho = 7 schedule from sigma(eps) to sigma(T) (CIFAR-10: 18)
    consistency.teacher_solver = "heun"  # the teacher's one ODE step between neighbouring levels: heun | ddim
    consistency.target_ema = 0.95       # EMA rate mu of the target network theta^- (CIFAR-10: 0.95)
    consistency.parameterization = ""   # student output: v | x0 | edm | flow; "": the teacher's if one of them, else
    #                                     v (edm when the teacher has no network); never eps, which would multiply its
    #                                     error by sigma(T) in f at high noise
    consistency.huber_c = 0.0           # c of the pseudo-Huber distance (0: 0.00054 sqrt(dimension))
    consistency.continuous = True       # pairs of neighbouring levels at any position (False: at the N levels only,
    #                                     as the paper; the student is then poor between them, docs/math.md)
    consistency.steps = 1               # consistency sampling steps of the student's snapshots and printed command

    config.metrics = quality = ml_collections.ConfigDict()
    quality.num_samples = 50000         # samples --mode fid scores (50k as in the papers)
    quality.num_samples_training = 1000  # samples scored every training.fid_freq steps
    quality.inception_weights = ""      # local Inception weights file (FID/KID/IS); "": torch hub's, downloaded once
    quality.cache_dir = ""              # reference statistics cache; "": $XDG_CACHE_HOME/scoresde/fid_stats
    #                                     (~/.cache/scoresde/fid_stats)
    return config
