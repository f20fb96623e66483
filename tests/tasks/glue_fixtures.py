"""A small GLUE folder in the exact layout and formats ``download_glue_data.py`` writes: tab-separated, unquoted,
the real headers (CoLA train/dev without one, MRPC train/dev with a byte-order mark), MNLI's 12/16/10 columns,
QQP's questions broken over two lines, stray quotes in sentences."""

from __future__ import annotations

from pathlib import Path


def tsv(*rows: tuple[str, ...]) -> str:
    return "".join("\t".join(row) + "\n" for row in rows)


MNLI_TRAIN_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label")
MNLI_DEV_HEADER = (*MNLI_TRAIN_HEADER[:10], "label1", "label2", "label3", "label4", "label5", "gold_label")
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
STSB_HEADER = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score")


def mnli_row(index: str, genre: str, premise: str, hypothesis: str, *labels: str) -> tuple[str, ...]:
    """One MNLI row: ids, genre, the binary and full parses (as the real files hold them), the pair, then labels."""
    def binary(text: str) -> str:
        return "( " + " ".join(text.rstrip(".").split()) + " . )"

    def parse(text: str) -> str:
        return "(ROOT (S " + " ".join(f"(NN {word})" for word in text.rstrip(".").split()) + " (. .)))"

    return (index, str(31193 + int(index)), f"{31193 + int(index)}n", genre, binary(premise), binary(hypothesis),
            parse(premise), parse(hypothesis), premise, hypothesis, *labels)


FILES: dict[str, str] = {
    # CoLA: train and dev have no header (source, label, original judgement marker, sentence); test has one.
    "CoLA/train.tsv": tsv(
        ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
        ("gj04", "1", "", "One more pseudo generalization and I'm giving up."),
        ("gj04", "0", "*", "They drank the pub."),
        ("ks08", "0", "*", '"Which book did you wonder whether John read?'),  # a stray quote opens the sentence
        ("ks08", "1", "", "Mary said \"hello\" to the children."),
    ),
    "CoLA/dev.tsv": tsv(
        ("gj04", "1", "", "The sailors rode the breeze clear of the rocks."),
        ("gj04", "0", "*", "The more you eat, the most you want."),
        ("bc01", "1", "", "He said \"no."),
    ),
    "CoLA/test.tsv": tsv(("index", "sentence"), ("0", "Bill whistled past the house."),
                         ("1", "The car honked its way down the road.")),
    # SST-2: tokenized sentences with a trailing space before the tab.
    "SST-2/train.tsv": tsv(("sentence", "label"), ("hide new secretions from the parental units ", "0"),
                           ("contains no wit , only labored gags ", "0"),
                           ("that loves its characters and communicates something rather beautiful about human "
                            "nature ", "1")),
    "SST-2/dev.tsv": tsv(("sentence", "label"), ("it 's a charming and often affecting journey . ", "1"),
                         ("unflinchingly bleak and desperate ", "0")),
    "SST-2/test.tsv": tsv(("index", "sentence"), ("0", "uneasy mishmash of styles and genres ."),
                          ("1", "this film 's relationship to actual tension is the same as what christmas-tree "
                                "flocking in a spray can is to actual snow : a poor -- if durable -- imitation .")),
    # MRPC: train/dev keep msr_paraphrase_train.txt's header, byte-order mark included; test gets an index.
    "MRPC/train.tsv": "\ufeff" + tsv(
        ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        ("1", "702876", "702977", 'Amrozi accused his brother , whom he called " the witness " , of deliberately '
                                  "distorting his evidence .",
         'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
         "evidence ."),
        ("0", "2108705", "2108831", "Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 "
                                    "billion .",
         "Yucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 ."),
        ("1", "1330381", "1330521", "They had published an advertisement on the Internet on June 10 , offering the "
                                    "cargo for sale , he added .",
         "On June 10 , the ship 's owners had published an advertisement on the Internet , offering the explosives "
         "for sale .")),
    "MRPC/dev.tsv": "\ufeff" + tsv(
        ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        ("1", "1355540", "1355592", "He said the foodservice pie business doesn 't fit the company 's long-term growth "
                                    "strategy .",
         '" The foodservice pie business does not fit our long-term growth strategy .'),
        ("0", "2029631", "2029565", "Magnarelli said Racicot hated the Iraqi regime and looked forward to using his "
                                    "long years of training in the war .",
         "His wife said he was \" 100 percent behind George Bush \" and looked forward to using his years of training "
         "in the war .")),
    "MRPC/test.tsv": tsv(
        ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        ("0", "1089874", "1089925", "PCCW 's chief operating officer , Mike Butcher , and Alex Arena , the chief "
                                    "financial officer , will report directly to Mr So .",
         "Current Chief Operating Officer Mike Butcher and Group Chief Financial Officer Alex Arena will report to "
         "So ."),
        ("1", "3019446", "3019327", "The world 's two largest automakers said their U.S. sales declined more than "
                                    "predicted last month as a late summer sales frenzy caused more of an industry "
                                    "backlash than expected .",
         "Domestic sales at both GM and No. 2 Ford Motor Co. declined more than predicted as a late summer sales "
         "frenzy prompted a larger-than-expected industry backlash .")),
    # QQP: the fourth row's second question was broken over two lines (5 fields, then 3).
    "QQP/train.tsv": tsv(
        ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        ("133273", "213221", "213222", "How is the life of a math student? Could you describe your own experiences?",
         "Which level of prepration is enough for the exam jlpt5?", "0"),
        ("402555", "536040", "536041", "How do I control my horny emotions?", "How do you control your horniness?",
         "1"),
        ("360472", "364011", "490273", "What causes stool color to change to yellow?",
         "What can cause stool to come out as little balls?", "0"),
        ("150662", "155721", "7256", "What is the best travel website in spain?",
         "What is the best travel website"),
        ("", "Was Muhammad a real historical figure? What is the evidence for his existence?", "0"),
        ("183004", "279958", "279959", "How do I get into the IT industry?",
         "How can I get into the IT industry as a fresher?", "1"),
    ),
    "QQP/dev.tsv": tsv(
        ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        ("40066", "79021", "79022", "Why are African-Americans so beautiful?", "Why are hispanics so beautiful?",
         "0"),
        ("390958", "523014", "523015", "Which is the best digital marketing institute in Pune?",
         "Which is the best digital marketing institution in Pune?", "1")),
    "QQP/test.tsv": tsv(("id", "question1", "question2"),
                        ("0", "Why do rockets look white?", "Why are rockets and boosters painted white?"),
                        ("1", "What's causing someone to be jealous?", "What can I do to avoid being jealous of "
                                                                       "someone?")),
    # STS-B: ten columns, float scores (three decimals as the files hold them).
    "STS-B/train.tsv": tsv(
        STSB_HEADER,
        ("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
         "An air plane is taking off.", "5.000"),
        ("1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", "A man is playing a large flute.",
         "A man is playing a flute.", "3.800"),
        ("2", "main-captions", "MSRvid", "2012test", "0005", "none", "none",
         "A man is spreading shreded cheese on a pizza.", "A man is spreading shredded cheese on an uncooked pizza.",
         "3.800"),
        ("3", "main-news", "headlines", "2013", "0233", "none", "none", "Obama signs up for health care",
         "Woman rescued after falling in river", "0.000")),
    "STS-B/dev.tsv": tsv(
        STSB_HEADER,
        ("0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man with a hard hat is dancing.",
         "A man wearing a hard hat is dancing.", "5.000"),
        ("1", "main-captions", "MSRvid", "2012test", "0002", "none", "none", "A young child is riding a horse.",
         "A child is riding a horse.", "4.750")),
    "STS-B/test.tsv": tsv(
        STSB_HEADER[:9],
        ("0", "main-captions", "MSRvid", "2012test", "0024", "none", "none", "A girl is styling her hair.",
         "A girl is brushing her hair."),
        ("1", "main-captions", "MSRvid", "2012test", "0033", "none", "none", "A group of men play soccer on the "
                                                                            "beach.",
         "A group of boys are playing soccer on the beach.")),
    # MNLI: 12 columns in train, 16 in dev (five annotators' labels, then gold_label), 10 in test.
    "MNLI/train.tsv": tsv(
        MNLI_TRAIN_HEADER,
        mnli_row("0", "government", "Conceptually cream skimming has two basic dimensions - product and geography.",
                 "Product and geography are what make cream skimming work. ", "neutral", "neutral"),
        mnli_row("1", "telephone", "you know during the season and i guess at at your level uh you lose them to the "
                                   "next level", "You lose the things to the following level if the people recall.",
                 "entailment", "entailment"),
        mnli_row("2", "fiction", "Gays and lesbians.", "Heterosexuals.", "contradiction", "contradiction")),
    "MNLI/dev_matched.tsv": tsv(
        MNLI_DEV_HEADER,
        mnli_row("0", "fiction", "The new rights are nice enough", "Everyone really likes the newest benefits ",
                 "neutral", "entailment", "neutral", "neutral", "neutral", "neutral"),
        mnli_row("1", "government", "This site includes a list of all award winners and a searchable database of "
                                    "Government Executive articles.",
                 "The Government Executive articles housed on the website are not able to be searched.",
                 "contradiction", "contradiction", "contradiction", "contradiction", "contradiction",
                 "contradiction"),
        # the first annotator disagrees with the gold label: gold_label (the last column) is the label
        mnli_row("2", "telephone", "uh i don't know i i have mixed emotions about him",
                 "I like him for the most part, but would still enjoy seeing someone beat him.",
                 "neutral", "entailment", "entailment", "entailment", "neutral", "entailment")),
    "MNLI/dev_mismatched.tsv": tsv(
        MNLI_DEV_HEADER,
        mnli_row("0", "letters", "Your contribution helped make it possible for us to provide our students with a "
                                 "quality education.", "Your contributions were of no help with our students' "
                                                       "education.",
                 "contradiction", "contradiction", "contradiction", "contradiction", "contradiction",
                 "contradiction"),
        mnli_row("1", "verbatim", "The answer has nothing to do with their cause.",
                 "Their cause is not relevant to the answer.", "entailment", "entailment", "entailment",
                 "entailment", "entailment", "entailment")),
    "MNLI/test_matched.tsv": tsv(
        MNLI_TEST_HEADER,
        mnli_row("0", "government", "Hierbas, ans seco, ans dulce, and frigola are just a few names worth keeping a "
                                    "look-out for.", "Hierbas is a name worth looking out for."),
        mnli_row("1", "fiction", "The extent of the behavioral effects would depend in part on the structure of the "
                                 "individual account program.", "Many people would be very unhappy to loose control "
                                                                "over their own money.")),
    "MNLI/test_mismatched.tsv": tsv(
        MNLI_TEST_HEADER,
        mnli_row("0", "letters", "What have you decided, what are you going to do?",
                 "So what's your decision?"),
        mnli_row("1", "oup", "Your gift is appreciated by each and every student.",
                 "Hundreds of students will benefit from your generosity."),
        mnli_row("2", "nineeleven", "The commission was set up to examine the attacks.",
                 "The commission examined the attacks.")),
    "QNLI/train.tsv": tsv(
        ("index", "question", "sentence", "label"),
        ("0", "When did the third Digimon series begin?", "Unlike the two seasons before it and most of the "
                                                          "seasons that followed, Digimon Tamers takes a darker "
                                                          "and more realistic approach to its story.",
         "not_entailment"),
        ("1", "Which missile batteries often have individual launchers several kilometres from one another?",
         "When MANPADS is operated by specialists, batteries may have several dozen teams deploying separately "
         "in small sections; self-propelled air defence guns may deploy in pairs.", "not_entailment"),
        ("2", "What two things does Popper argue Tarski's theory involves in an evaluation of truth?",
         "He bases this interpretation on the fact that examples such as the one described above refer to two "
         "things: assertions and the facts to which they refer.", "entailment")),
    "QNLI/dev.tsv": tsv(
        ("index", "question", "sentence", "label"),
        ("0", "What came into force after the new constitution was herald?",
         "As of that day, the new constitution heralding the Second Republic came into force.", "entailment")),
    "QNLI/test.tsv": tsv(
        ("index", "question", "sentence"),
        ("0", "What organization is devoted to Jihad against Israel?",
         "For some decades prior to the First Palestine Intifada in 1987, the Muslim Brotherhood in Palestine took "
         "a \"quiescent\" stance towards Israel.")),
    "RTE/train.tsv": tsv(
        ("index", "sentence1", "sentence2", "label"),
        ("0", "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.",
         "not_entailment"),
        ("1", "A place of sorrow, after Pope John Paul II died, became a place of celebration, as Roman Catholic "
              "faithful gathered in downtown Chicago to mark the installation of new Pope Benedict XVI.",
         "Pope Benedict XVI is the new leader of the Roman Catholic Church.", "entailment")),
    "RTE/dev.tsv": tsv(
        ("index", "sentence1", "sentence2", "label"),
        ("0", "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according "
              "to the Christopher Reeve Foundation.", "Christopher Reeve had an accident.", "not_entailment")),
    "RTE/test.tsv": tsv(
        ("index", "sentence1", "sentence2"),
        ("0", "Mangla was summoned after Madhumita's sister Nidhi Shukla, who was the first witness in the case.",
         "Shukla is related to Mangla.")),
    "WNLI/train.tsv": tsv(
        ("index", "sentence1", "sentence2", "label"),
        ("0", "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.", "The carrot had a hole.",
         "1"),
        ("1", "John couldn't see the stage with Billy in front of him because he is so short.",
         "John is so short.", "1"),
        ("2", "The police arrested all of the gang members. They were trying to stop the drug trade in the "
              "neighborhood.", "The police were trying to stop the drug trade in the neighborhood.", "1"),
        ("3", "Steve follows Fred's example in everything. He influences him hugely.", "Steve influences him "
                                                                                       "hugely.", "0")),
    "WNLI/dev.tsv": tsv(
        ("index", "sentence1", "sentence2", "label"),
        ("0", "The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", "0")),
    "WNLI/test.tsv": tsv(
        ("index", "sentence1", "sentence2"),
        ("0", "Maude and Dora had seen the trains rushing across the prairie, with long, rolling puffs of black "
              "smoke streaming back from the engine.", "Horses ran away when Maude and Dora came into sight.")),
    "diagnostic/diagnostic.tsv": tsv(
        ("index", "sentence1", "sentence2"),
        ("0", "The cat sat on the mat.", "The cat did not sit on the mat."),
        ("1", "The cat did not sit on the mat.", "The cat sat on the mat."),
        ("2", "When you've got no snow, it's really hard to learn a snow sport so we looked at all the different "
              "ways I could mimic being on snow without actually being on snow.",
         "When you've got snow, it's really hard to learn a snow sport so we looked at all the different ways I "
         "could mimic being on snow without actually being on snow.")),
}


def write_glue_folder(root: Path) -> Path:
    """Write every file of :data:`FILES` under ``root`` (the GLUE folder) and return ``root``."""
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    return root
