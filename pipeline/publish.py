"""Where a run's results go besides its output folder, for pretrain and finetune alike:
experiment trackers, the Hugging Face Hub, and the license its model card states."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import hub, tracking
from pipeline.card import LICENSES
from pipeline.config import option


@dataclass
class PublishArgs:
    log_with: list[str] = option(default_factory=lambda: ["tensorboard"], choices=tracking.TRACKERS,
                                 help="experiment trackers, comma-separated (wandb and mlflow need the 'track' extra)")
    project: str = option("kowiki-bert", "W&B project / MLflow experiment")
    push_to_hub: str = option("", "upload the model (with its card) to this Hub repository id when the stage ends")
    hub_private: bool = option(True, "create the Hub repository private")
    license: str = option("auto", "license stated in the model card; auto: the corpus's (CC BY-SA 4.0 for Wikipedia, "
                          "else other) when pretraining, the base model's card's when fine-tuning", choices=LICENSES)

    def check(self) -> None:
        """Before any work: trackers installed, and a push that can happen."""
        tracking.check_installed(self.log_with)
        tracking.check_usable(self.log_with, self.project)
        if self.push_to_hub:
            hub.check_can_push(self.push_to_hub)


ALIASES = {"--log-with": "publish.log_with", "--project": "publish.project", "--push-to-hub": "publish.push_to_hub",
           "--hub-private": "publish.hub_private", "--license": "publish.license"}
