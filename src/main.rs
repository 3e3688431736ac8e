fn main() { println!("{}", biomistral::version()); }
