import pytest
import torch

from aelab.model import ConvAutoencoder, encoder_sizes
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
    with torch.no_grad():
        assert torch.equal(ours(x), decoder(encoder(x)))
    # and the reverse
    encoder2, decoder2 = TutorialEncoder(4, 128).eval(), TutorialDecoder(4, 128).eval()
    encoder2.load_state_dict(ours.encoder.state_dict())
    decoder2.load_state_dict(ours.decoder.state_dict())
    with torch.no_grad():
        assert torch.equal(decoder2(encoder2(x)), ours(x))
