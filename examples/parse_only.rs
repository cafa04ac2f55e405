fn main() {
    let path = std::env::args().nth(1).unwrap();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let p = token_rotator::policy::load(std::path::Path::new(&path), &token_rotator::kinds())
            .unwrap();
        println!("load {:?} {}", t.elapsed(), p.tokens.len());
    }
}
