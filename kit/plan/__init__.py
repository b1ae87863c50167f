"""Planning: the memory terms (``memory``), the search over a site's allocations (``search``),
quantization choice (``quantize``), and the serve and fine-tune plans built on them."""

from kit.plan.finetune import methods, plan_finetune
from kit.plan.quantize import choices as quantize_choices
from kit.plan.serve import plan_serve

__all__ = ["methods", "plan_finetune", "plan_serve", "quantize_choices"]
