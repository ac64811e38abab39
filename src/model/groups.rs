//! Layer groups (paper Appendix D): group 1 = conv1 + bn1 + layer1, 2 = layer2, 3 = layer3,
//! 4 = layer4, 5 = fc. Groups are data: a parameter's group follows from its name.

use crate::{Error, Result};
use std::fmt;

/// Number of layer groups of a ResNet-18.
pub const NUM_GROUPS: u8 = 5;

/// The group (1..=5) a torchvision parameter name belongs to.
pub fn group_of(name: &str) -> u8 {
    let head = name.split('.').next().unwrap_or("");
    match head {
        "conv1" | "bn1" | "layer1" => 1,
        "layer2" => 2,
        "layer3" => 3,
        "layer4" => 4,
        _ => 5,
    }
}

/// A set of layer groups, parsed from `3-5`, `5`, `2-5`, `1,3`, `all` or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupSet(u8);

impl GroupSet {
    pub fn all() -> Self {
        GroupSet(0b11111)
    }
    pub fn none() -> Self {
        GroupSet(0)
    }
    /// Only the given group.
    pub fn single(g: u8) -> Result<Self> {
        check(g, &g.to_string())?;
        Ok(GroupSet(1 << (g - 1)))
    }
    pub fn contains(&self, g: u8) -> bool {
        (1..=NUM_GROUPS).contains(&g) && self.0 & (1 << (g - 1)) != 0
    }
    /// Whether the parameter `name` lies in this set.
    pub fn contains_param(&self, name: &str) -> bool {
        self.contains(group_of(name))
    }
    pub fn groups(&self) -> Vec<u8> {
        (1..=NUM_GROUPS).filter(|g| self.contains(*g)).collect()
    }
    pub fn complement(&self) -> Self {
        GroupSet(!self.0 & 0b11111)
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Parses a group specification; errors name the offending text and the valid range.
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.trim();
        match s.to_ascii_lowercase().as_str() {
            "all" => return Ok(Self::all()),
            "none" => return Ok(Self::none()),
            "" => {
                return Err(Error::model(
                    "groups: empty specification (use e.g. 3-5, 5, all or none)",
                ))
            }
            _ => {}
        }
        let mut set = 0u8;
        for part in s.split(',') {
            let part = part.trim();
            if let Some((a, b)) = part.split_once('-') {
                let a = num(a, spec)?;
                let b = num(b, spec)?;
                check(a, spec)?;
                check(b, spec)?;
                if a > b {
                    return Err(Error::model(format!(
                        "groups {spec}: the range runs backwards; write {b}-{a}"
                    )));
                }
                for g in a..=b {
                    set |= 1 << (g - 1);
                }
            } else {
                let g = num(part, spec)?;
                check(g, spec)?;
                set |= 1 << (g - 1);
            }
        }
        Ok(GroupSet(set))
    }
}

fn num(text: &str, spec: &str) -> Result<u8> {
    text.trim().parse::<u8>().map_err(|_| {
        Error::model(format!(
            "groups {spec}: `{}` is not a group number; groups are 1..5 (1 = conv1+bn1+layer1, \
             2 = layer2, 3 = layer3, 4 = layer4, 5 = fc), e.g. 3-5, 5, all or none",
            text.trim()
        ))
    })
}

fn check(g: u8, spec: &str) -> Result<()> {
    if !(1..=NUM_GROUPS).contains(&g) {
        return Err(Error::model(format!("groups {spec}: groups are 1..5")));
    }
    Ok(())
}

impl fmt::Display for GroupSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.groups();
        if g.is_empty() {
            return write!(f, "none");
        }
        if g.len() == NUM_GROUPS as usize {
            return write!(f, "all");
        }
        let contiguous = g.windows(2).all(|w| w[1] == w[0] + 1);
        if contiguous && g.len() > 1 {
            write!(f, "{}-{}", g[0], g[g.len() - 1])
        } else {
            let s: Vec<String> = g.iter().map(|x| x.to_string()).collect();
            write!(f, "{}", s.join(","))
        }
    }
}

impl std::str::FromStr for GroupSet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GroupSet::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(GroupSet::parse("3-5").unwrap().groups(), vec![3, 4, 5]);
        assert_eq!(GroupSet::parse("5").unwrap().groups(), vec![5]);
        assert_eq!(GroupSet::parse("2-5").unwrap().groups(), vec![2, 3, 4, 5]);
        assert_eq!(
            GroupSet::parse("all").unwrap().groups(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(GroupSet::parse("none").unwrap().is_empty());
        assert_eq!(GroupSet::parse("1,3").unwrap().groups(), vec![1, 3]);
        assert_eq!(GroupSet::parse("3-5").unwrap().to_string(), "3-5");
    }

    #[test]
    fn errors() {
        assert_eq!(
            GroupSet::parse("0-7").unwrap_err().to_string(),
            "groups 0-7: groups are 1..5"
        );
        assert!(GroupSet::parse("5-3")
            .unwrap_err()
            .to_string()
            .contains("write 3-5"));
        assert!(GroupSet::parse("x")
            .unwrap_err()
            .to_string()
            .contains("not a group number"));
        assert!(GroupSet::parse("").is_err());
        assert!(GroupSet::parse("6").is_err());
    }

    #[test]
    fn names_map_to_groups() {
        assert_eq!(group_of("conv1.weight"), 1);
        assert_eq!(group_of("bn1.running_mean"), 1);
        assert_eq!(group_of("layer1.0.conv1.weight"), 1);
        assert_eq!(group_of("layer2.0.downsample.0.weight"), 2);
        assert_eq!(group_of("layer4.1.bn2.bias"), 4);
        assert_eq!(group_of("fc.bias"), 5);
    }
}
