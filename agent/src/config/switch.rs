//! The on/off words of probe and sink sections.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Switch {
    On,
    Off,
    /// Start only if `start_check` says the observed service is present.
    Auto,
}

impl Switch {
    /// The rule for `auto`: it starts a probe when the probe's start_check finds the observed
    /// service, so it needs one (native probes have none). The config reader and the control
    /// channel both ask here.
    pub fn fits(self, start_check: Option<&str>) -> bool {
        self != Self::Auto || start_check.is_some()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for Switch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == Self::On
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for OnOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Switch;

    #[test]
    fn auto_needs_a_start_check() {
        assert!(!Switch::Auto.fits(None));
        assert!(Switch::Auto.fits(Some("pgrep -c nginx")));
        assert!(Switch::On.fits(None) && Switch::Off.fits(None));
    }
}
