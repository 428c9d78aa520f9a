import pytest
import torch

from aelab.models.ae import ConvAutoencoder
from aelab.models.nets import encoder_sizes
from aelab.ops import ConvTranspose2d
from tutorial_pipeline import Decoder as TutorialDecoder
from tutorial_pipeline import Encoder as TutorialEncoder


def test_shapes_for_mnist():
    model = ConvAutoencoder(latent_dim=4)
    x = torch.rand(5, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (5, 4)
    out = model.decode(z)
    assert out.shape == (5, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert encoder_sizes(28) == [28, 14, 7, 3]


@pytest.mark.parametrize("size, channels", [(32, 3), (64, 1), (29, 1)])
def test_shapes_are_computed_from_the_input_size(size, channels):
    model = ConvAutoencoder(latent_dim=2, in_channels=channels, image_size=size)
    assert model(torch.rand(2, channels, size, size)).shape == (2, channels, size, size)


@pytest.mark.parametrize("height, width", [(28, 40), (17, 16), (64, 30), (33, 100)])
def test_non_square_images_of_any_size_and_channels(height, width):
    model = ConvAutoencoder(latent_dim=3, in_channels=3, image_size=height, image_width=width)
    x = torch.rand(2, 3, height, width)
    assert model(x).shape == (2, 3, height, width) and model.encode(x).shape == (2, 3)
    model.train()
    model(x).mean().backward()  # the fast CPU transposed convolutions take these shapes too
    assert all(p.grad is not None for p in model.parameters())


def test_width_and_hidden_make_a_bigger_network():
    small, big = ConvAutoencoder(), ConvAutoencoder(width=16, hidden=256)
    assert big.encoder.encoder_cnn[0].out_channels == 16 and big.encoder.encoder_cnn[5].out_channels == 64
    assert big.encoder.encoder_lin[0].out_features == 256 and big.decoder.decoder_lin[2].out_features == 64 * 3 * 3
    assert sum(p.numel() for p in big.parameters()) > 2 * sum(p.numel() for p in small.parameters())
    assert big(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_images_smaller_than_16_pixels_are_refused_with_a_fix():
    from aelab import AelabError

    with pytest.raises(AelabError, match="at least 16x16.*choose larger"):
        ConvAutoencoder(image_size=28, image_width=12)


def test_same_layers_and_names_as_the_tutorial():
    torch.manual_seed(0)
    ours = ConvAutoencoder(latent_dim=4)
    torch.manual_seed(0)
    encoder, decoder = TutorialEncoder(4, 128), TutorialDecoder(4, 128)
    # seeded identically, construction order equal: identical initial weights
    for a, b in zip(ours.encoder.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(a, b)
    assert list(ours.decoder.state_dict()) == list(decoder.state_dict())


def test_tutorial_weights_load_into_aelab_and_back():
    torch.manual_seed(1)
    encoder, decoder = TutorialEncoder(4, 128), TutorialDecoder(4, 128)
    # make BatchNorm statistics non-trivial, as after training
    encoder.train(), decoder.train()
    decoder(encoder(torch.rand(64, 1, 28, 28)))
    encoder.eval(), decoder.eval()
    ours = ConvAutoencoder(latent_dim=4).eval()
    ours.encoder.load_state_dict(encoder.state_dict())
    ours.decoder.load_state_dict(decoder.state_dict())
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():  # equal up to float rounding: aelab's transposed convolutions add in another order
        assert torch.allclose(ours(x), decoder(encoder(x)), rtol=0, atol=1e-6)
    # and the reverse
    encoder2, decoder2 = TutorialEncoder(4, 128).eval(), TutorialDecoder(4, 128).eval()
    encoder2.load_state_dict(ours.encoder.state_dict())
    decoder2.load_state_dict(ours.decoder.state_dict())
    with torch.no_grad():
        assert torch.allclose(decoder2(encoder2(x)), ours(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("c_in, c_out, size, padding, output_padding",
                         [(32, 16, 3, 0, 0), (16, 8, 7, 1, 1), (8, 1, 14, 1, 1), (4, 3, 5, 1, 0), (3, 2, 6, 0, 1),
                          (3, 8, 5, 0, 1), (2, 9, 4, 1, 0), (16, 8, 7, 1, (1, 0)), (8, 1, 6, 1, (0, 1))])
# both formulations (fewer than 8 outputs, or 8+), and output paddings that differ by axis (non-square images)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_transposed_convolution_equals_pytorchs(c_in, c_out, size, padding, output_padding, channels_last):
    ours = ConvTranspose2d(c_in, c_out, 3, stride=2, padding=padding, output_padding=output_padding)
    reference = torch.nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=padding, output_padding=output_padding)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(5, c_in, size, size + 1, requires_grad=True)  # not square, to catch a swapped axis
    inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    a, b = ours(inputs), reference(inputs)
    assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-5)
    grad = torch.randn_like(b)
    ours_grads = torch.autograd.grad(a, [x, ours.weight, ours.bias], grad)
    reference_grads = torch.autograd.grad(b, [x, reference.weight, reference.bias], grad)
    for mine, theirs in zip(ours_grads, reference_grads):
        assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height, width", [(28, 28), (64, 64), (16, 16), (17, 23), (32, 48), (100, 60)])
def test_every_output_row_of_every_decoder_layer_is_computed_from_its_input(height, width):
    """No layer pads its output with a row that holds its bias alone (a dead border in every
    reconstruction): each transposed convolution's last row and column depend on its input."""
    from aelab.models.ae import ConvAutoencoder

    model = ConvAutoencoder(4, 3, height, image_width=width)
    x = model.decoder.unflatten(torch.randn(1, model.decoder.decoder_lin[2].out_features))
    model.eval()
    for layer in model.decoder.decoder_conv:
        x = x.detach().clone().requires_grad_(isinstance(layer, torch.nn.ConvTranspose2d))
        y = layer(x)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            for corner in (y[0, 0, -1, :].sum(), y[0, 0, :, -1].sum()):
                assert torch.autograd.grad(corner, x, retain_graph=True)[0].abs().sum() > 0
        x = y
    assert x.shape[-2:] == (height, width)
