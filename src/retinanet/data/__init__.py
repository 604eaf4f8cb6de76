"""Dataset readers, image decoding, validation and augmentation."""
