"""SynSeg's parts, one file each, composed by `build_synseg`."""
from synseg.models.backbone import BackboneConfig, ClipBackbone
from synseg.models.decoder import DecoderConfig
from synseg.models.synseg import DEFAULT_TEMPLATES, SynSeg, SynSegConfig, build_synseg

__all__ = ["BackboneConfig", "ClipBackbone", "DecoderConfig", "DEFAULT_TEMPLATES", "SynSeg", "SynSegConfig", "build_synseg"]
