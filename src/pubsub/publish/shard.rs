//! `--shard K/N`: a static share of the targets, the same in every process of a fleet
//! whatever order the targets are listed in.

use url::Url;

/// This process's share of the targets: the 1-based `index`-th of `count` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Reads `K/N`, where 1 <= K <= N.
pub fn parse_shard(text: &str) -> Result<Shard, String> {
    let not_a_shard = |why: &str| format!("'{text}' is not a shard: {why}");
    let (index, count) = text
        .split_once('/')
        .ok_or_else(|| not_a_shard("expected K/N, such as 1/3"))?;
    let number = |part: &str| part.trim().parse::<u32>();
    let (Ok(index), Ok(count)) = (number(index), number(count)) else {
        return Err(not_a_shard("K and N must be whole numbers, such as 1/3"));
    };
    if count == 0 {
        return Err(not_a_shard("N must be at least 1"));
    }
    if !(1..=count).contains(&index) {
        return Err(not_a_shard("K must be between 1 and N"));
    }
    Ok(Shard { index, count })
}

/// Whether `shard` owns `url`. Every `pub` process of a fleet must agree on this without
/// talking to the others, across restarts, machines and Rust versions, and whatever order
/// its targets were listed in; so it depends only on the URL's text and uses FNV-1a 64,
/// whose constants are fixed, rather than std's hasher, which may change between releases.
pub fn in_shard(url: &Url, shard: Shard) -> bool {
    fnv1a_64(url.as_str().as_bytes()) % u64::from(shard.count) == u64::from(shard.index - 1)
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated_urls(count: usize) -> Vec<Url> {
        (0..count)
            .map(|i| Url::parse(&format!("https://host{}.example/path/{i}", i % 37)).unwrap())
            .collect()
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_are_disjoint_cover_everything_and_are_never_empty() {
        let urls = generated_urls(1000);
        for count in 1..=5 {
            let mut owners = vec![0; urls.len()];
            for index in 1..=count {
                let shard = Shard { index, count };
                let owned = urls.iter().filter(|url| in_shard(url, shard)).count();
                assert!(owned > 0, "shard {index}/{count} owns nothing");
                for (i, url) in urls.iter().enumerate() {
                    owners[i] += usize::from(in_shard(url, shard));
                }
            }
            assert!(owners.iter().all(|&n| n == 1), "N={count}: {owners:?}");
        }
    }

    #[test]
    fn a_urls_shard_does_not_depend_on_list_order() {
        let urls = generated_urls(200);
        let shard = Shard { index: 2, count: 3 };
        let forward: Vec<&Url> = urls.iter().filter(|u| in_shard(u, shard)).collect();
        let mut backward: Vec<&Url> = urls.iter().rev().filter(|u| in_shard(u, shard)).collect();
        backward.reverse();
        assert_eq!(forward, backward);
        // Pinned, so that a change of hash, which would reshuffle a running fleet, fails here.
        let url = Url::parse("https://example.com/health").unwrap();
        assert_eq!(fnv1a_64(url.as_str().as_bytes()), 0xdf8c_29ce_fedd_4622);
        assert!(in_shard(&url, Shard { index: 2, count: 3 }));
        assert!(in_shard(&url, Shard { index: 5, count: 5 }));
    }

    #[test]
    fn parses_shards() {
        assert_eq!(parse_shard("1/1"), Ok(Shard { index: 1, count: 1 }));
        assert_eq!(parse_shard("2/3"), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "a/b", "3", "1/0", "", "-1/3"] {
            let error = parse_shard(bad).unwrap_err();
            assert!(
                error.starts_with(&format!("'{bad}' is not a shard: ")),
                "{error}"
            );
            assert!(!error.contains('\n'));
        }
        assert_eq!(
            parse_shard("4/3").unwrap_err(),
            "'4/3' is not a shard: K must be between 1 and N"
        );
    }
}
