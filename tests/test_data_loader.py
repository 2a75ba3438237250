import ml_collections
import pytest
import torch

from scoresde import data


def digits(random_flip=True, seed=0):
    config = ml_collections.ConfigDict({"data": {"dataset": "digits", "random_flip": random_flip}, "seed": seed})
    return data.get_dataset(config)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_resuming_gives_the_batches_of_an_unbroken_run():
    # 1500 digits in batches of 64: 23 steps per epoch, so 60 steps cross two epoch boundaries.
    straight = take(data.infinite_loader(digits().train, 64, seed=3), 60)
    # A new process: fresh dataset objects, the loader rebuilt at the checkpointed step.
    resumed = data.infinite_loader(digits().train, 64, seed=3, start_step=31)
    for (x, y), (x_ref, y_ref) in zip(take(resumed, 29), straight[31:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert resumed.step == 60
    x, y = straight[0]
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (64,) and y.dtype == torch.int64


def test_each_epoch_is_a_permutation_without_the_last_partial_batch():
    loader = data.infinite_loader(digits(random_flip=False).train, 64, seed=0)
    assert loader.steps_per_epoch == 23
    epochs = [torch.cat([loader.indices(s) for s in range(e * 23, (e + 1) * 23)]) for e in range(3)]
    for idx in epochs:
        assert len(idx) == 23 * 64 and len(idx.unique()) == 23 * 64 and idx.max() < 1500
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(epochs[1], data.epoch_permutation(1500, 0, 1)[:23 * 64])
    assert not torch.equal(data.infinite_loader(digits().train, 64, seed=1).indices(0), loader.indices(0))


def test_flips_are_a_function_of_seed_epoch_and_index():
    info, plain = digits(), digits(random_flip=False)
    train = info.train
    everything = torch.arange(len(train))
    raw, _ = plain.train.get_batch(everything)
    asymmetric = ~(raw == raw.flip(-1)).flatten(1).all(1)

    def flipped(dataset, epoch):
        dataset.set_epoch(epoch)
        x, _ = dataset.get_batch(everything)
        mirrored = (x == raw.flip(-1)).flatten(1).all(1)
        assert (mirrored | (x == raw).flatten(1).all(1)).all()    # each item as it is or mirrored
        return mirrored[asymmetric]

    flips = {epoch: flipped(train, epoch) for epoch in (0, 1)}
    # Fair coin per item: the flipped share has SE sqrt(0.25/n) < 0.013 for n > 1400; allow 4 SE. Epochs differ.
    assert asymmetric.sum() > 1400 and abs(flips[0].double().mean() - 0.5) < 0.052
    assert (flips[0] != flips[1]).double().mean() > 0.4
    assert (flipped(digits(seed=1).train, 0) != flips[0]).any()
    assert torch.equal(flipped(train, 0), flips[0])
    # __getitem__ agrees with get_batch, and the test set is never flipped.
    i = int(asymmetric.nonzero()[0])
    assert torch.equal(train[i][0], raw[i].flip(-1) if flips[0][0] else raw[i])
    assert torch.equal(info.test.get_batch(torch.arange(297))[0], plain.test.get_batch(torch.arange(297))[0])


def test_without_set_epoch_flips_follow_the_global_torch_rng():
    train, raw = digits().train, digits(random_flip=False).train
    i = next(i for i in range(len(raw)) if not torch.equal(raw[i][0], raw[i][0].flip(-1)))
    torch.manual_seed(0)
    first = torch.stack([train[i][0] for _ in range(40)])
    torch.manual_seed(0)
    assert torch.equal(torch.stack([train[i][0] for _ in range(40)]), first)
    flipped = torch.tensor([torch.equal(x, raw[i][0].flip(-1)) for x in first])
    # 40 fair coins: both outcomes occur except with probability 2^-39.
    assert flipped.any() and not flipped.all()


def test_loader_errors():
    train = digits().train
    with pytest.raises(ValueError, match="at most 1500"):
        data.infinite_loader(train, 2000, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        data.infinite_loader(train, 0, seed=0)
    with pytest.raises(ValueError, match="start_step"):
        data.infinite_loader(train, 10, seed=0, start_step=-1)
    with pytest.raises(ValueError, match="random_flip needs images"):
        data.ArrayDataset(torch.zeros(4, 2), torch.zeros(4), random_flip=True)


def test_registry_names_and_config_errors():
    assert data.available() == sorted(["digits", "swissroll", "moons", "circles", "checkerboard", "gmm8", "mnist",
                                       "cifar10", "image_folder", "array"])
    names = "digits, swissroll, moons, circles, checkerboard, gmm8, mnist, cifar10, image_folder, array"
    with pytest.raises(ValueError, match=f"unknown dataset 'cifar100'; available: {names}$"):
        data.get_dataset(ml_collections.ConfigDict({"data": {"dataset": "cifar100"}}))
    with pytest.raises(ValueError, match="config.data.dataset"):
        data.get_dataset(ml_collections.ConfigDict({"data": {"image_size": 8}}))
    with pytest.raises(ValueError, match="num_channels must be 1 .* or 3"):
        data.get_dataset(ml_collections.ConfigDict({"data": {"dataset": "digits", "num_channels": 2}}))
    with pytest.raises(ValueError, match="test_fraction"):
        data.get_dataset(ml_collections.ConfigDict({"data": {"dataset": "array", "test_fraction": 1.0}}))
    options = data.DataOptions.from_config(ml_collections.ConfigDict({"data": {"dataset": "GMM8"}}))
    assert options == data.DataOptions(dataset="gmm8", **data.DEFAULTS, seed=0)


def test_batches_equal_the_items_and_plain_datasets_work():
    train = digits().train
    loader = data.infinite_loader(train, 32, seed=5, start_step=50)   # epoch 1 of 46-step epochs
    x, y = next(loader)
    items = [train[int(i)] for i in loader.indices(50)]
    assert train.epoch == 1
    assert torch.equal(x, torch.stack([item[0] for item in items]))
    assert y.tolist() == [item[1] for item in items]
    plain = torch.utils.data.TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    plain_loader = data.infinite_loader(plain, 5, seed=0)
    xs = torch.cat([next(plain_loader)[0] for _ in range(2)])
    # One epoch of a dataset without get_batch: every item once, collated by torch.
    assert sorted(xs.squeeze(1).tolist()) == list(range(10))
