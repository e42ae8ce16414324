"""HiFi-GAN in Keras 3: generator, discriminators, losses, streaming input and the trainer."""
