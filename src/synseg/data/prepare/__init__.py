"""`synseg prepare`: one converter per benchmark, from the official downloads to the layout `synseg eval` reads."""
from __future__ import annotations

from synseg.data.prepare.ade import ADE
from synseg.data.prepare.base import Preparer, SplitReport, run_tasks
from synseg.data.prepare.cityscapes import CityscapesPreparer
from synseg.data.prepare.coco_object import COCOObject
from synseg.data.prepare.coco_stuff import COCOStuff
from synseg.data.prepare.context import Context
from synseg.data.prepare.voc import VOC

PREPARERS: dict[str, type[Preparer]] = {cls.name: cls for cls in (VOC, Context, COCOObject, COCOStuff,
                                                                  CityscapesPreparer, ADE)}

__all__ = ["PREPARERS", "Preparer", "SplitReport", "run_tasks"]
