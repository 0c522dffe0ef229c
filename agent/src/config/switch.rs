//! The on/off words of probe and sink sections.

use std::fmt;

/// A probe's switch: probe vocabulary, defined with the probes' settings (configuration reads
/// it; probes never read configuration).
pub use crate::probes::settings::Switch;

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
