//! Person-name detection from bundled frequency lists: the most common given names and surnames
//! of English-, French-, German-, Spanish-, Italian-, Dutch- and Portuguese-speaking countries
//! (public census and registry rankings; several hundred of each). Nothing is downloaded at run
//! time. A value is a person's name when it is one to four capitalised words of letters (with
//! `-`, `'` and `.` inside), no digits, and at least one word is on a list.

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::names::fold_accent;

const GIVEN: &str = "james john robert michael william david richard joseph thomas charles christopher daniel matthew anthony mark \
donald steven paul andrew joshua kenneth kevin brian george timothy ronald edward jason jeffrey ryan jacob gary nicholas eric \
jonathan stephen larry justin scott brandon benjamin samuel gregory alexander frank patrick raymond jack dennis jerry tyler aaron \
jose adam nathan henry douglas zachary peter kyle noah ethan jeremy walter christian keith roger terry austin sean gerald carl \
harold dylan arthur lawrence jordan jesse bryan billy bruce gabriel joe logan albert willie alan eugene russell vincent philip \
bobby johnny bradley mary patricia jennifer linda elizabeth barbara susan jessica sarah karen lisa nancy betty sandra margaret \
ashley kimberly emily donna michelle carol amanda melissa deborah stephanie dorothy rebecca sharon laura cynthia amy kathleen \
angela shirley brenda emma anna pamela nicole samantha katherine christine helen debra rachel carolyn janet maria catherine \
heather diane olivia julie joyce victoria ruth virginia lauren kelly christina joan evelyn judith andrea hannah megan cheryl \
jacqueline martha madison teresa gloria sara janice ann kathryn abigail sophia frances jean alice judy isabella julia grace \
amber denise danielle marilyn beverly charlotte natalie theresa diana brittany doris kayla alexis lori marie oliver harry \
charlie leo oscar archie freddie alfie isla ava amelia poppy lily mia ella jacques jean pierre michel philippe alain nicolas \
christophe patrick francois laurent frederic eric stephane sebastien julien olivier thierry pascal david antoine hugo louis \
lucas gabriel arthur jules raphael adam nathan theo enzo mathis marie nathalie isabelle sylvie catherine francoise martine \
christine sophie sandrine valerie veronique celine chloe camille lea manon ines jade louise zoe lucie juliette margaux \
thomas michael andreas stefan christian markus martin frank peter klaus wolfgang jurgen uwe matthias tobias sebastian florian \
jan lukas leon finn jonas felix maximilian paul elias ben luca ursula monika petra sabine andrea claudia susanne birgit gabriele \
stefanie julia anna lena laura lea hanna sophie mia emilia marta lucia paula carmen josefa isabel dolores pilar antonia \
francisca rosa cristina mercedes raquel alejandro pablo manuel francisco juan javier jesus antonio miguel carlos sergio \
alvaro diego mario jorge rafael angel fernando luis ramon enrique giuseppe giovanni marco andrea luca francesco alessandro \
matteo lorenzo roberto stefano paolo massimo davide simone federico riccardo giulia chiara francesca sara martina elena \
alessia valentina giorgia silvia federica anna sofia aurora ginevra daan sem bram lars thijs jesse ruben niels tim sanne \
lotte femke anouk fleur eva iris joao pedro rafael gustavo thiago felipe bruno ana beatriz mariana larissa camila fernanda \
ahmed mohamed mohammed ali omar fatima aisha yusuf ibrahim wei li ming hiroshi yuki kenji priya raj amit anil";

const SURNAMES: &str = "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez gonzalez \
wilson anderson thomas taylor moore jackson martin lee perez thompson white harris sanchez clark ramirez lewis robinson \
walker young allen king wright scott torres nguyen hill flores green adams nelson baker hall rivera campbell mitchell \
carter roberts gomez phillips evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy cook rogers \
gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos kim cox ward richardson watson brooks chavez wood james \
bennett gray mendoza ruiz hughes price alvarez castillo sanders patel myers long ross foster jimenez powell jenkins perry \
russell sullivan bell coleman butler henderson barnes fisher vasquez simmons graham murray ford hamilton wallace griffin \
west cole hayes bryant gibson ellis stevens walsh byrne ryan oconnor doyle mccarthy kennedy lynch murphy oneill davies \
hughes owen jenkins bernard dubois durand lefebvre leroy moreau simon laurent michel lefevre garcia david bertrand roux \
vincent fournier morel girard andre mercier dupont lambert bonnet francois martinez legrand garnier faure rousseau blanc \
guerin muller henry roussel nicolas perrin morin mathieu clement gauthier dumont lopez fontaine chevalier robin mueller \
schmidt schneider fischer weber meyer wagner becker schulz hoffmann schafer koch bauer richter klein wolf schroder neumann \
schwarz zimmermann braun kruger hofmann hartmann lange schmitt werner schmitz krause meier lehmann schmid schulze maier \
kohler herrmann konig walter mayer huber kaiser fuchs peters lang scholz moller weiss jung hahn vogel friedrich keller \
gunther frank berger winkler roth beck lorenz baumann franke albrecht schuster simon ludwig bohm winter kraus martin \
fernandez gonzalez rodriguez lopez martinez sanchez perez gomez martin jimenez ruiz hernandez diaz moreno alvarez munoz \
romero alonso gutierrez navarro torres dominguez vazquez ramos gil ramirez serrano blanco molina morales suarez ortega \
delgado castro ortiz rubio marin sanz nunez iglesias medina garrido cortes castillo santos lozano guerrero cano prieto \
rossi russo ferrari esposito bianchi romano colombo ricci marino greco bruno gallo conti deluca mancini costa giordano \
rizzo lombardi moretti barbieri fontana santoro mariani rinaldi caruso ferrara galli martini leone longo gentile martinelli \
vitale lombardo serra coppola desantis dangelo marchetti parisi villa conte ferraro ferri fabbri bianco marini grasso \
devries jansen bakker visser smit meijer boer mulder degroot bos vos peters hendriks vandijk dekker brouwer dewit dijkstra \
smits degraaf vanderlinden kok jacobs dehaan vermeulen vandenberg vanderheijden silva santos ferreira pereira oliveira \
costa rodrigues martins jesus sousa fernandes goncalves gomes lopes marques alves almeida ribeiro pinto carvalho teixeira \
moreira correia mendes nunes soares vieira monteiro cardoso rocha raposo neves coelho cruz cunha pires khan singh kumar \
sharma ali ahmed hussain wang zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo tanaka suzuki takahashi watanabe \
ito yamamoto nakamura kobayashi";

static GIVEN_SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
static SURNAME_SET: OnceLock<HashSet<&'static str>> = OnceLock::new();

/// A bundled list as a set, built on first use.
fn list(cell: &'static OnceLock<HashSet<&'static str>>, words: &'static str) -> &'static HashSet<&'static str> {
    cell.get_or_init(|| words.split_whitespace().collect())
}

/// Whether `word` (any case, accents allowed) is a listed given name or surname.
pub fn known_name(word: &str) -> bool {
    // The folded, lower-cased key in a stack buffer (no bundled name is anywhere near 64 bytes).
    let mut buf = [0u8; 64];
    let mut len = 0;
    for c in word.chars().map(fold_accent).filter(|c| c.is_alphabetic()) {
        for l in c.to_lowercase() {
            if len + l.len_utf8() > buf.len() {
                return false;
            }
            len += l.encode_utf8(&mut buf[len..]).len();
        }
    }
    let Ok(key) = std::str::from_utf8(&buf[..len]) else { return false };
    list(&GIVEN_SET, GIVEN).contains(key) || list(&SURNAME_SET, SURNAMES).contains(key)
}

/// Whether `value` looks like a person's name: one to four capitalised words of letters (inner
/// `-`, `'`, `.` allowed; particles such as `de`, `van`, `von`, `da`, `di`, `le` may be lower
/// case), no digits, and at least one word on the bundled lists. `Smith, John` is accepted.
pub fn looks_like_person_name(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() || v.len() > 80 {
        return false;
    }
    let mut words = 0;
    let mut known = false;
    for w in v.split([' ', ',']).filter(|w| !w.is_empty()) {
        words += 1;
        if words > 4 {
            return false;
        }
        let particle = matches!(w, "de" | "van" | "von" | "der" | "den" | "da" | "di" | "du" | "le" | "la" | "del" | "dos" | "das" | "y");
        let mut chars = w.chars();
        let Some(first) = chars.next() else { continue };
        if !particle && !first.is_uppercase() {
            return false;
        }
        if !w.chars().all(|c| c.is_alphabetic() || matches!(c, '-' | '\'' | '.')) {
            return false;
        }
        if !known && !particle && w.split(['-', '\'']).any(known_name) {
            known = true;
        }
    }
    words > 0 && known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_non_names() {
        for name in ["Jane Smith", "José García", "Smith, John", "Jean-Pierre Dubois", "Anna van der Berg", "Müller", "O'Neill Kelly"] {
            assert!(looks_like_person_name(name), "{name}");
        }
        for not in ["", "Product 42", "ACME Corp Ltd Inc Holdings", "hello world", "42", "Widget", "north", "Order shipped"] {
            assert!(!looks_like_person_name(not), "{not}");
        }
    }
}
