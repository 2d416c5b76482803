"""ModDrop's description: what the API needs (name, options, fusions). No torch here."""

from pydantic import BaseModel, ConfigDict, Field

from training.plugins import MethodDescription


class ModDropOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop_rate: float = Field(0.5, ge=0.0, lt=1.0,
                             description="Probability that a complete training sample loses y at a step")
    rescale: bool = Field(False, description="Scale the g(y) kept by 1 / (1 − drop_rate), as dropout does")


description = MethodDescription(
    name="moddrop",
    title="Modality dropout (ModDrop)",
    description="Zero padding, and during training each complete sample loses y at random (drop_rate), so the "
                "model learns to predict from x alone as well as from both.",
    implementation="missmod_moddrop.method:ModDrop",
    # φ(f, 0) is 0 with outer product: a dropped sample would carry nothing (as for zero padding).
    fusions=("add", "concat"),
    options=ModDropOptions,
)
