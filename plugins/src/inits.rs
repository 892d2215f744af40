//! Initializers: a variance formula and a distribution (signed constant, uniform, normal).
//! `gain` multiplies the standard deviation (so the variance by `gain^2`).

use serde::{Deserialize, Serialize};
use supermask_core::{register_plugin, Distribution, Fans, Initializer, Result};

fn one() -> f64 {
    1.0
}

fn check_gain(name: &str, gain: f64) -> Result<()> {
    anyhow::ensure!(
        gain.is_finite() && gain > 0.0,
        "{name}: gain must be > 0, got {gain}"
    );
    Ok(())
}

/// Which fan a variance formula divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Fan {
    /// Inputs per output unit (forward-pass preserving; He et al.'s default).
    #[default]
    In,
    /// Outputs per input unit (backward-pass preserving).
    Out,
}

impl Fan {
    fn of(self, fans: Fans) -> f64 {
        match self {
            Fan::In => fans.fan_in as f64,
            Fan::Out => fans.fan_out as f64,
        }
    }
}

/// He et al. (2015): `Var = gain^2 * 2 / fan_in`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct He {
    /// Distribution family.
    #[serde(default)]
    pub dist: Distribution,
    /// Multiplier of the standard deviation.
    #[serde(default = "one")]
    pub gain: f64,
}

#[typetag::serde(name = "he")]
impl Initializer for He {
    fn variance(&self, fans: Fans, _p0: f64) -> f64 {
        self.gain * self.gain * 2.0 / fans.fan_in as f64
    }
    fn distribution(&self) -> Distribution {
        self.dist
    }
    fn validate(&self) -> Result<()> {
        check_gain("he", self.gain)
    }
}
register_plugin!(Init, "he", He, "He et al.: Var = gain^2 * 2 / fan_in");

/// Glorot & Bengio (2010): `Var = gain^2 * 2 / (fan_in + fan_out)`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xavier {
    /// Distribution family.
    #[serde(default)]
    pub dist: Distribution,
    /// Multiplier of the standard deviation.
    #[serde(default = "one")]
    pub gain: f64,
}

#[typetag::serde(name = "xavier")]
impl Initializer for Xavier {
    fn variance(&self, fans: Fans, _p0: f64) -> f64 {
        self.gain * self.gain * 2.0 / (fans.fan_in + fans.fan_out) as f64
    }
    fn distribution(&self) -> Distribution {
        self.dist
    }
    fn validate(&self) -> Result<()> {
        check_gain("xavier", self.gain)
    }
}
register_plugin!(
    Init,
    "xavier",
    Xavier,
    "Glorot & Bengio: Var = gain^2 * 2 / (fan_in + fan_out)"
);

/// ELU initialization, equation 3 without masking (`p0 = 0`): `Var = gain^2 * 1.5 / n`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elu {
    /// Distribution family.
    #[serde(default)]
    pub dist: Distribution,
    /// Multiplier of the standard deviation.
    #[serde(default = "one")]
    pub gain: f64,
    /// The fan `n` divides by.
    #[serde(default)]
    pub fan: Fan,
}

#[typetag::serde(name = "elu")]
impl Initializer for Elu {
    fn variance(&self, fans: Fans, _p0: f64) -> f64 {
        self.gain * self.gain * 1.5 / self.fan.of(fans)
    }
    fn distribution(&self) -> Distribution {
        self.dist
    }
    fn validate(&self) -> Result<()> {
        check_gain("elu", self.gain)
    }
}
register_plugin!(
    Init,
    "elu",
    Elu,
    "ELU init, eq. 3 with p0 = 0: Var = gain^2 * 1.5 / fan"
);

/// Which ELUS formula to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ElusVariant {
    /// Equations 3 and 24: `Var = gain^2 * 1.5 / (n (1 - p0))`, `p0` the layer's initial share
    /// of zero mask entries (taken from the threshold at initialization).
    #[default]
    Equation,
    /// What the authors' code and Table 1 used: He scaled by `gain` (sqrt(3) for FCN/Conv,
    /// sqrt(1.5) for ResNets; section 3): `Var = gain^2 * 2 / fan_in`.
    ScaledHe,
}

/// ELUS, the paper's "ELU Scaled" initialization for masked weights (eq. 3, appendix A).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elus {
    /// Distribution family.
    #[serde(default)]
    pub dist: Distribution,
    /// Multiplier of the standard deviation (the paper's extra scaling factor).
    #[serde(default = "one")]
    pub gain: f64,
    /// Equation 3 or the authors' scaled He.
    #[serde(default)]
    pub variant: ElusVariant,
    /// The fan `n` of equation 3.
    #[serde(default)]
    pub fan: Fan,
}

/// ELUS variance; `p0` is clamped to 0.999 so a fully pruned layer stays finite.
fn elus_variance(gain: f64, variant: ElusVariant, fan: Fan, fans: Fans, p0: f64) -> f64 {
    match variant {
        ElusVariant::Equation => gain * gain * 1.5 / (fan.of(fans) * (1.0 - p0.clamp(0.0, 0.999))),
        ElusVariant::ScaledHe => gain * gain * 2.0 / fans.fan_in as f64,
    }
}

#[typetag::serde(name = "elus")]
impl Initializer for Elus {
    fn variance(&self, fans: Fans, p0: f64) -> f64 {
        elus_variance(self.gain, self.variant, self.fan, fans, p0)
    }
    fn distribution(&self) -> Distribution {
        self.dist
    }
    fn validate(&self) -> Result<()> {
        check_gain("elus", self.gain)
    }
}
register_plugin!(
    Init,
    "elus",
    Elus,
    "ELUS (eq. 3/24): Var = gain^2 * 1.5 / (n (1 - p0)); variant scaled-he: gain^2 * 2 / fan_in"
);

/// Score init of the paper's main experiments: Xavier uniform, bound
/// `gain * sqrt(6 / (fan_in + fan_out))`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XavierUniform {
    /// Multiplier of the standard deviation.
    #[serde(default = "one")]
    pub gain: f64,
}

#[typetag::serde(name = "xavier-uniform")]
impl Initializer for XavierUniform {
    fn variance(&self, fans: Fans, _p0: f64) -> f64 {
        self.gain * self.gain * 2.0 / (fans.fan_in + fans.fan_out) as f64
    }
    fn distribution(&self) -> Distribution {
        Distribution::Uniform
    }
    fn validate(&self) -> Result<()> {
        check_gain("xavier-uniform", self.gain)
    }
}
register_plugin!(
    Init,
    "xavier-uniform",
    XavierUniform,
    "score init: uniform, Var = gain^2 * 2 / (fan_in + fan_out)"
);

/// The ELUS score init of appendix E: uniform with the ELUS variance. Scores are drawn before
/// thresholds exist, so `p0 = 0` here.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElusUniform {
    /// Multiplier of the standard deviation.
    #[serde(default = "one")]
    pub gain: f64,
    /// Equation 3 or the authors' scaled He.
    #[serde(default)]
    pub variant: ElusVariant,
    /// The fan `n` of equation 3.
    #[serde(default)]
    pub fan: Fan,
}

#[typetag::serde(name = "elus-uniform")]
impl Initializer for ElusUniform {
    fn variance(&self, fans: Fans, _p0: f64) -> f64 {
        elus_variance(self.gain, self.variant, self.fan, fans, 0.0)
    }
    fn distribution(&self) -> Distribution {
        Distribution::Uniform
    }
    fn validate(&self) -> Result<()> {
        check_gain("elus-uniform", self.gain)
    }
}
register_plugin!(
    Init,
    "elus-uniform",
    ElusUniform,
    "score init (appendix E): uniform with the ELUS variance, p0 = 0"
);

/// LeCun et al. (1998): `Var = gain^2 / fan_in`. Not used by the paper; it is the worked
/// example of "how to add a plugin" in the README.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lecun {
    /// Distribution family.
    #[serde(default)]
    pub dist: Distribution,
    /// Multiplier of the standard deviation.
    #[serde(default = "one")]
    pub gain: f64,
}

#[typetag::serde(name = "lecun")]
impl Initializer for Lecun {
    fn variance(&self, fans: Fans, _p0: f64) -> f64 {
        self.gain * self.gain / fans.fan_in as f64
    }
    fn distribution(&self) -> Distribution {
        self.dist
    }
    fn validate(&self) -> Result<()> {
        check_gain("lecun", self.gain)
    }
}
register_plugin!(Init, "lecun", Lecun, "LeCun: Var = gain^2 / fan_in");
