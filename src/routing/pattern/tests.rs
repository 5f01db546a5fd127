use super::*;

#[test]
fn bucket_patterns_match_runs_of_non_dots() {
    // (pattern, bucket, matches)
    let cases = [
        ("team-*", "team-a", true),
        ("team-*", "team-alpha-42", true),
        ("team-*", "team-", false),
        ("team-*", "team", false),
        ("team-*", "team-a.b", false),
        ("team-*", "xteam-a", false),
        ("*-logs", "app-logs", true),
        ("*-logs", "-logs", false),
        ("*-logs", "app.x-logs", false),
        ("team-*-data", "team-a-data", true),
        ("team-*-data", "team--data", false),
        ("team-*-*", "team-a-b", true),
        ("team-*-*", "team-a-b-c", true),
        ("team-*-*", "team-ab", false),
        ("*.example.*", "a.example.b", true),
        ("*.example.*", "a.b.example.c", false),
        ("a*b*c", "axbyc", true),
        ("a*b*c", "abbxc", true),
        ("a*b*c", "abbc", false), // each '*' takes at least one character
        ("a*b*c", "abc", false),
        ("*", "any-bucket", true),
        ("*", "a.b", false),
    ];
    for (pattern, bucket, want) in cases {
        let p = BucketPattern::parse(pattern).unwrap();
        assert_eq!(p.matches(bucket), want, "{pattern} ~ {bucket}");
    }
}

#[test]
fn bad_bucket_patterns_are_refused_with_the_reason() {
    let cases = [
        ("team", "needs a '*'"),
        ("Team-*", "cannot stand in a bucket name"),
        ("team_*", "cannot stand in a bucket name"),
        ("team-**", "'**'"),
        ("team-?", "needs a '*'"),
        ("team-?*", "cannot stand in a bucket name"),
    ];
    for (pattern, want) in cases {
        let e = BucketPattern::parse(pattern).unwrap_err();
        assert!(e.contains(want), "{pattern}: {e}");
    }
    assert!(BucketPattern::parse(&format!("{}*", "a".repeat(63))).is_err());
}

#[test]
fn specificity_counts_literal_characters() {
    let s = |p: &str| BucketPattern::parse(p).unwrap().specificity();
    assert!(s("team-a-*") > s("team-*"));
    assert!(s("team-*-data") > s("team-*"));
    assert_eq!(s("*"), 0);
}

#[test]
fn overlapping_patterns_are_found_and_disjoint_ones_are_not() {
    // (a, b, some bucket matches both)
    let cases = [
        ("team-*", "team-a-*", true),
        ("team-*", "*-data", true),
        ("team-*", "dev-*", false),
        ("*-logs", "*-data", false),
        ("a*", "*b", true),
        ("a.*", "a*", false), // '*' never matches '.', and "a*" needs one character after 'a'
        ("a-*", "a*", true),
        ("x*y", "x*z", false),
        ("*", "team-*", true),
        ("*.b", "*", false),
        ("a*", "a", false),
    ];
    for (a, b, want) in cases {
        let (pa, pb) = (BucketPattern::parse(a), BucketPattern::parse(b));
        let got = match (pa, pb) {
            (Ok(pa), Ok(pb)) => pa.overlaps(&pb) && pb.overlaps(&pa),
            // A name, not a pattern: the other one matches it or not.
            (Ok(pa), Err(_)) => pa.matches(b),
            _ => unreachable!(),
        };
        assert_eq!(got, want, "{a} & {b}");
    }
}

#[test]
fn overlap_agrees_with_matching_on_every_short_bucket() {
    // Brute force over every name of up to 4 characters of a small alphabet.
    let alphabet = [b'a', b'b', b'-', b'.'];
    let mut names = vec![String::new()];
    let mut all = Vec::new();
    for _ in 0..4 {
        names = names
            .iter()
            .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{}", char::from(*c))))
            .collect();
        all.extend(names.iter().cloned());
    }
    let patterns = ["a*", "*b", "a*b", "*.*", "a-*", "*-*", "*a*", "b.*", "a*.b", "*"];
    for a in patterns {
        for b in patterns {
            let (pa, pb) = (BucketPattern::parse(a).unwrap(), BucketPattern::parse(b).unwrap());
            let brute = all.iter().any(|n| pa.matches(n) && pb.matches(n));
            assert_eq!(pa.overlaps(&pb), brute, "{a} & {b}");
        }
    }
}

const ARN: &str = "arn:aws:s3:us-east-1:123456789012:accesspoint/";

#[test]
fn templates_make_the_access_point_of_a_bucket() {
    let t = AccessPointTemplate::parse(&format!("{ARN}{{bucket}}-rw")).unwrap();
    let ap = t.expand("team-a").unwrap();
    assert_eq!(ap.name(), "team-a-rw");
    assert_eq!(
        ap.host(),
        "team-a-rw-123456789012.s3-accesspoint.us-east-1.amazonaws.com"
    );
    let twice = AccessPointTemplate::parse(&format!("{ARN}ap-{{bucket}}-{{bucket}}")).unwrap();
    assert_eq!(twice.expand("abc").unwrap().name(), "ap-abc-abc");
    // Names over 50 characters, or with a '.', are never made.
    assert!(t.expand(&"a".repeat(48)).is_none());
    assert!(t.expand(&"a".repeat(47)).is_some());
    assert!(t.expand("team.a").is_none());
    assert_eq!(t.name_len(10), 13);
}

#[test]
fn templates_that_can_make_an_invalid_name_are_refused() {
    let cases = [
        (
            "arn:aws:s3:{bucket}:123456789012:accesspoint/x",
            "only the access point name",
        ),
        (
            "arn:aws:s3:us-east-1:{bucket}:accesspoint/x-{bucket}",
            "only the access point name",
        ),
        (
            &format!("{ARN}{{bucket}}_rw") as &str,
            "cannot stand in an access point name",
        ),
        (&format!("{ARN}{{Bucket}}-rw"), "the only placeholder"),
        (&format!("{ARN}{{bucket}}-{{key}}"), "the only placeholder"),
        (&format!("{ARN}-{{bucket}}"), "starts and ends"),
        (&format!("{ARN}{{bucket}}-"), "starts and ends"),
        (&format!("{ARN}RW-{{bucket}}"), "cannot stand in an access point name"),
        (
            "arn:aws:s3:us-east-1:1234:accesspoint/{bucket}",
            "account must be 12 digits",
        ),
        ("arn:aws:s3:::{bucket}", "resource must be accesspoint/NAME"),
        (&format!("{ARN}fixed"), "names the bucket as {bucket}"),
    ];
    for (text, want) in cases {
        let e = AccessPointTemplate::parse(text).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}
