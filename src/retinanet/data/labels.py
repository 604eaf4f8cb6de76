"""Label values that are not classes: the contract between the data pipeline, which
writes them into the padded label tensors, and the losses and exported graphs that read
them. Classes are 0..K-1 (no background class)."""

PAD_LABEL = -1  # a padding slot, not a box (batch padding; exported outputs past num_detections)
CROWD_LABEL = -2  # a crowd region / ignore box: anchors inside it are not trained as background
