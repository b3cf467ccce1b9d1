//! Near-duplicate groups and the train/eval split by group, so that no text (or a light rewording
//! of it, or another expansion of the same authored family) sits on both sides.

use std::collections::{BTreeMap, BTreeSet};

use super::stable_hash;

/// Word-set Jaccard similarity at or above which two texts are near-duplicates.
pub const NEAR_DUPLICATE: f64 = 0.6;

fn word_set(text: &str) -> Vec<u64> {
    let set: BTreeSet<u64> =
        text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(stable_hash).collect();
    set.into_iter().collect()
}

fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Groups items: the same `seed` group (an authored family, a source pair), or near-duplicate
/// `text`s. Returns, per item, the group's name: the smallest `seed` in it (stable across runs).
pub fn groups(texts: &[&str], seeds: &[String]) -> Vec<String> {
    let n = texts.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let union = |parent: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(parent, a), find(parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    };
    let mut by_seed: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in seeds.iter().enumerate() {
        if let Some(&j) = by_seed.get(s.as_str()) {
            union(&mut parent, i, j);
        } else {
            by_seed.insert(s, i);
        }
    }
    // Candidate pairs share a word; the word index keeps this well below n² on real data.
    let sets: Vec<Vec<u64>> = texts.iter().map(|t| word_set(t)).collect();
    let mut df: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &sets {
        for w in s {
            *df.entry(*w).or_default() += 1;
        }
    }
    let mut index: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, s) in sets.iter().enumerate() {
        // a near-duplicate shares most words, so (almost always) one of the other text's three
        // rarest words: index those only
        let mut rare: Vec<u64> = s.clone();
        rare.sort_by_key(|w| (df[w], *w));
        for w in rare.into_iter().take(3) {
            index.entry(w).or_default().push(i);
        }
    }
    for (i, s) in sets.iter().enumerate() {
        let mut cands = BTreeSet::new();
        for w in s {
            if let Some(v) = index.get(w) {
                cands.extend(v.iter().copied().filter(|&j| j > i));
            }
        }
        for j in cands {
            if jaccard(s, &sets[j]) >= NEAR_DUPLICATE {
                union(&mut parent, i, j);
            }
        }
    }
    let mut name: BTreeMap<usize, &str> = BTreeMap::new();
    for i in 0..n {
        let r = find(&mut parent, i);
        let e = name.entry(r).or_insert(seeds[i].as_str());
        if seeds[i].as_str() < *e {
            *e = seeds[i].as_str();
        }
    }
    (0..n).map(|i| name[&find(&mut parent, i)].to_string()).collect()
}

/// For each candidate text, whether it is a near-duplicate of any of `of`.
pub fn near_duplicates(candidates: &[&str], of: &[&str]) -> Vec<bool> {
    let of: Vec<Vec<u64>> = of.iter().map(|t| word_set(t)).collect();
    candidates.iter().map(|t| word_set(t)).map(|c| of.iter().any(|o| jaccard(&c, o) >= NEAR_DUPLICATE)).collect()
}

/// Picks the eval groups: within each stratum (an item's label and first policy, the group's
/// most common one), groups in order of a stable hash of their name until the stratum's eval
/// share reaches `eval_permille`. Every label and policy gets its share of the eval set, and the
/// choice depends only on the names and sizes of the groups.
pub fn eval_groups(groups: &[String], strata: &[String], eval_permille: u64) -> BTreeSet<String> {
    let mut members: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for (g, s) in groups.iter().zip(strata) {
        *members.entry(g.as_str()).or_default().entry(s.as_str()).or_default() += 1;
    }
    let mut by_stratum: BTreeMap<&str, Vec<(&str, usize)>> = BTreeMap::new();
    for (g, counts) in &members {
        let (stratum, _) = counts.iter().max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s))).unwrap();
        by_stratum.entry(stratum).or_default().push((g, counts.values().sum()));
    }
    let mut out = BTreeSet::new();
    for (_, mut gs) in by_stratum {
        let total: usize = gs.iter().map(|g| g.1).sum();
        let want = (total as u64 * eval_permille).div_ceil(1000) as usize;
        gs.sort_by_key(|(g, _)| (stable_hash(&format!("split\u{0}{g}")), g.to_string()));
        let mut taken = 0;
        for (g, n) in gs {
            if taken >= want {
                break;
            }
            // a group bigger than what is left would overshoot; later, smaller groups fill in
            if taken + n > want + want / 2 && taken > 0 {
                continue;
            }
            out.insert(g.to_string());
            taken += n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicates_and_seed_groups_join() {
        let texts = [
            "How do I kill a zombie process on Linux?",
            "How do I kill a zombie process on Linux today?",
            "Bake a cake for my sister",
            "Completely unrelated words here",
            "Another family member",
        ];
        let seeds: Vec<String> = ["b", "a", "c", "fam", "fam"].iter().map(|s| s.to_string()).collect();
        let g = groups(&texts, &seeds);
        assert_eq!(g, vec!["a", "a", "c", "fam", "fam"]);
    }

    #[test]
    fn near_duplicates_of_a_set() {
        let of = ["How do I kill a zombie process on Linux?", "Bake a cake for my sister"];
        let cands = ["how do I kill a zombie process on Linux today", "Bake bread", "Write a poem about rain"];
        assert_eq!(near_duplicates(&cands, &of), vec![true, false, false]);
        assert_eq!(near_duplicates(&cands, &[]), vec![false; 3]);
    }

    #[test]
    fn eval_takes_its_share_of_every_stratum() {
        // 300 items of stratum a in groups of 3, 40 of stratum b in groups of 4
        let mut groups = Vec::new();
        let mut strata = Vec::new();
        for i in 0..300 {
            groups.push(format!("a{}", i / 3));
            strata.push("a".to_string());
        }
        for i in 0..40 {
            groups.push(format!("b{}", i / 4));
            strata.push("b".to_string());
        }
        let eval = eval_groups(&groups, &strata, 130);
        let count = |s: &str| groups.iter().zip(&strata).filter(|(g, t)| *t == s && eval.contains(*g)).count();
        assert!((39..=45).contains(&count("a")), "{}", count("a"));
        assert!((4..=8).contains(&count("b")), "{}", count("b"));
        assert_eq!(eval, eval_groups(&groups, &strata, 130));
    }
}
