"""Cover-art (image) features: frozen ImageNet backbones as per-track embeddings (:mod:`.embed`)."""
