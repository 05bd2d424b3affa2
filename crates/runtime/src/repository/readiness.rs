//! When a server over many models is ready: the rule a readiness probe answers with.
//!
//! Per-model readiness is always exact (`ModelHandle::is_ready`). The server's is a policy,
//! because a pod with one broken model among several is a choice: keep it out of the load
//! balancer (clients of every model expect it), or keep serving the models that work.
//! Explicitly unloaded models never count against readiness.

use std::str::FromStr;

use super::Repository;

/// Which models must be serving for the whole repository to be ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Readiness {
    /// At least one model serves, and every model found (not explicitly unloaded) serves.
    /// The default: like Triton's strict readiness, a pod is not ready while any of its
    /// models is loading or failed.
    #[default]
    All,
    /// At least one model serves: a broken model does not take the others out of rotation.
    Any,
    /// Every listed model serves (others may be failed or absent).
    Listed(Vec<String>),
}

impl FromStr for Readiness {
    type Err = String;

    /// `all`, `any`, or `listed:NAME[,NAME...]`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "any" => Ok(Self::Any),
            _ => {
                let names = s.strip_prefix("listed:").ok_or_else(|| {
                    format!("readiness {s:?}: expected `all`, `any` or `listed:NAME[,NAME...]`")
                })?;
                let names: Vec<String> = names
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names.is_empty() {
                    return Err(format!("readiness {s:?}: `listed:` names no model"));
                }
                Ok(Self::Listed(names))
            }
        }
    }
}

impl Repository {
    /// Whether the repository is ready under `policy`.
    pub fn ready(&self, policy: &Readiness) -> bool {
        let models = self.index();
        let mut counted = models.values().filter(|e| e.unloaded.is_none());
        match policy {
            Readiness::All => {
                let counted: Vec<_> = counted.collect();
                !counted.is_empty() && counted.iter().all(|e| e.handle.is_ready())
            }
            Readiness::Any => counted.any(|e| e.handle.is_ready()),
            Readiness::Listed(names) => names.iter().all(|n| {
                models
                    .get(n)
                    .is_some_and(|e| e.unloaded.is_none() && e.handle.is_ready())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_policies_and_refuses_the_rest() {
        assert_eq!("all".parse(), Ok(Readiness::All));
        assert_eq!("any".parse(), Ok(Readiness::Any));
        assert_eq!(
            "listed:a, b".parse(),
            Ok(Readiness::Listed(vec!["a".into(), "b".into()]))
        );
        assert!("listed:".parse::<Readiness>().is_err());
        assert!("some".parse::<Readiness>().is_err());
    }
}
