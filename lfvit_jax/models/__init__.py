"""The networks (DeiT, LF-ViT), their precision policy, region geometry, token selection and
FLOPs count."""
