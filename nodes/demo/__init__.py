"""Demo models: small Flux and PixArt-α networks trained on handwritten digits, with the pieces a
workflow needs around them (digit conditioning, a fixed linear "VAE"). They let anyone see what
ProCache does to real samples without downloading a multi-GB checkpoint."""
